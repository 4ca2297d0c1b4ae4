"""Progress of the long loops of a labelled section (evaluate's measurements): on a terminal a tqdm bar with its rate
and ETA; in a log (DVC's, a pipe) plain lines, at most one every LOG_INTERVAL seconds and none for a loop that ends
within LOG_DELAY seconds. Outside a section, loops run silent (unlearn's health monitor, bench/, tests). A stage's own
main loop (finetune's and unlearn's steps, generate's notes) shows its progress with bar(), the same two ways."""

import contextlib
import contextvars
import sys

LOG_INTERVAL, LOG_DELAY = 30.0, 10.0
LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed} elapsed, {remaining} left, {rate_fmt}]"
_SECTION = contextvars.ContextVar("progress_section", default=None)


@contextlib.contextmanager
def section(label):
    """Loops run inside this block (in this thread, or a thread started with contextvars.copy_context()) show their
    progress under `label`."""
    token = _SECTION.set(label)
    try:
        yield
    finally:
        _SECTION.reset(token)


class _Lines:
    """tqdm's output as a log wants it: each redraw a line of its own, the same line never twice in a row."""

    def __init__(self, stream):
        self.stream, self.last = stream, None

    def write(self, text):
        for line in text.replace("\r", "\n").split("\n"):
            if line.strip() and line.rstrip() != self.last:
                self.last = line.rstrip()
                self.stream.write(self.last + "\n")

    def flush(self):
        self.stream.flush()


def tracked(iterable, what, total=None, unit="batch"):
    """`iterable`, with its progress shown when a section is open: '<section>: <what>'."""
    label = _SECTION.get()
    if label is None:
        return iterable
    from tqdm import tqdm

    stream = sys.stderr
    if stream.isatty():
        return tqdm(iterable, total=total, desc=f"{label}: {what}", unit=unit, leave=False, file=stream)
    # miniters=1: a line only after an iteration and LOG_INTERVAL seconds (tqdm's monitor thread would otherwise
    # force a redraw of a slow loop every maxinterval seconds)
    return tqdm(iterable, total=total, desc=f"{label}: {what}", unit=unit, file=_Lines(stream), ascii=True,
                mininterval=LOG_INTERVAL, miniters=1, delay=LOG_DELAY, bar_format=LOG_FORMAT)


def bar(iterable=None, total=None, what="", unit="it", initial=0, disable=False):
    """A stage's main progress bar: tqdm on a terminal; in a log, plain lines with the postfix (loss, tokens/s) at
    most one every LOG_INTERVAL seconds, and the last one when it closes (tqdm's \\r redraws would otherwise fill
    DVC's log with thousands of updates)."""
    from tqdm import tqdm

    class LogBar(tqdm):
        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):  # shown with the next line, not now
            super().set_postfix(ordered_dict, refresh=False, **kwargs)

    stream = sys.stderr
    if disable or stream.isatty():
        return tqdm(iterable, total=total, initial=initial, desc=what, unit=unit, file=stream, disable=disable)
    return LogBar(iterable, total=total, initial=initial, desc=what, unit=unit, file=_Lines(stream), ascii=True,
                  mininterval=LOG_INTERVAL, miniters=1, bar_format=LOG_FORMAT + "{postfix}")

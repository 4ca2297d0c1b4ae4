"""Progress of evaluate's long loops: a bar with an ETA on a terminal, plain lines in a log, silence elsewhere."""

import contextvars
import io
import sys
import threading
import time

from stages.common import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_outside_a_section_a_loop_runs_silent_and_untouched(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    items = range(3)
    assert progress.tracked(items, "x") is items
    assert sys.stderr.getvalue() == ""


def test_in_a_log_each_report_is_a_plain_line_with_what_is_left(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr(progress, "LOG_DELAY", 0)
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0)
    with progress.section("evaluate: knowledge probes"):
        assert list(progress.tracked(range(4), "greedy decoding")) == [0, 1, 2, 3]
    out = sys.stderr.getvalue()
    assert "\r" not in out and out.endswith("\n")
    lines = out.splitlines()
    assert lines[-1].startswith("evaluate: knowledge probes: greedy decoding: 4/4 batch [")
    assert all(" left, " in line for line in lines) and len(lines) == len(set(lines)) >= 2


def test_a_short_loop_in_a_log_prints_nothing(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with progress.section("evaluate: uncertainty"):
        list(progress.tracked(range(3), "greedy decoding"))
    assert sys.stderr.getvalue() == ""  # shorter than LOG_DELAY


def test_on_a_terminal_it_is_a_tqdm_bar_with_rate_and_eta(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    with progress.section("evaluate: sampling attack"):
        for _ in progress.tracked(range(5), "sampling"):
            time.sleep(0.12)  # past tqdm's redraw interval
    out = sys.stderr.getvalue()
    assert "\r" in out and "evaluate: sampling attack: sampling:" in out and "5/5" in out and "<" in out


def test_a_thread_started_in_a_copy_of_the_context_reports_under_the_callers_section(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr(progress, "LOG_DELAY", 0)
    with progress.section("evaluate: relearning attacks"):
        thread = threading.Thread(target=contextvars.copy_context().run,
                                  args=(lambda: list(progress.tracked(range(2), "relearning (benign)", unit="step")),))
        thread.start()
        thread.join()
    assert "evaluate: relearning attacks: relearning (benign): 2/2 step" in sys.stderr.getvalue()


def test_relearn_all_reports_each_parallel_job_under_the_callers_section(monkeypatch):
    """relearn_all's threads (one per job when the CPU has a core each) run in a copy of the caller's context, so
    each job's loop reports under evaluate's section instead of running silent."""
    import torch

    from stages.evaluate import attacks

    class Model(torch.nn.Module):
        device = torch.device("cpu")

    def relearn(model, tokenizer, pairs, steps, measure, what="relearning", **settings):
        list(progress.tracked(range(2), what, unit="step"))
        return {max(steps): what}

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr(progress, "LOG_DELAY", 0)
    monkeypatch.setattr(attacks, "relearn", relearn)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a core per job: the threaded path
    try:
        with progress.section("evaluate: relearning attacks"):
            results = attacks.relearn_all(Model(), object(), {"forget": ([], None), "benign": ([], None)}, [2])
    finally:
        torch.set_num_threads(threads)
    assert results == {"forget": {2: "relearning (forget)"}, "benign": {2: "relearning (benign)"}}
    out = sys.stderr.getvalue()
    for name in ("forget", "benign"):
        assert f"evaluate: relearning attacks: relearning ({name}): 2/2 step" in out, out


def test_a_stages_bar_in_a_log_is_plain_lines_with_its_postfix_and_the_last_count(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0)
    bar = progress.bar(total=4, what="finetune", unit="step")
    for step in range(4):
        bar.update(1)
        bar.set_postfix(loss=f"{1.0 / (step + 1):.3f}")
    bar.close()
    out = sys.stderr.getvalue()
    assert "\r" not in out and "%|" not in out and out.endswith("\n")
    lines = out.splitlines()
    assert lines[0].startswith("finetune: 0/4 step [") and lines[-1].startswith("finetune: 4/4 step [")
    assert lines[-1].endswith("loss=0.250") and len(lines) == len(set(lines))


def test_a_stages_bar_in_a_log_waits_log_interval_between_lines_even_as_its_postfix_changes(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    bar = progress.bar(range(50), total=50, what="unlearn npo", unit="step")
    for step in bar:
        bar.set_postfix(loss=f"{step:.3f}")  # tqdm would redraw at once: one line per step in DVC's log
    bar.close()
    lines = sys.stderr.getvalue().splitlines()
    assert [line.split(" [")[0] for line in lines] == ["unlearn npo: 0/50 step", "unlearn npo: 50/50 step"]
    assert lines[-1].endswith("loss=49.000")


def test_a_stages_bar_on_a_terminal_is_tqdms_and_disabled_is_silent(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    for _ in progress.bar(range(3), total=3, what="generate", unit="note"):
        time.sleep(0.12)
    out = sys.stderr.getvalue()
    assert "\r" in out and "generate: 100%|" in out
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert list(progress.bar(range(3), what="generate", disable=True)) == [0, 1, 2]
    assert sys.stderr.getvalue() == ""

"""The one JSON/JSONL reader and writer (JSON Lines through `jsonlines`). Every write is atomic (a temporary file
beside the target, then rename) but the append-only log of a resumable stage (jsonl_appender), whose every line is
synced as it is written."""

import contextlib
import functools
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path

import jsonlines

_dumps = functools.partial(json.dumps, ensure_ascii=False)  # one object per line, UTF-8 as it is


class InputError(ValueError):
    """Bad input data, with a one-sentence message naming the file (and line) at fault."""


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary directory beside `path`; on success it replaces `path` (a directory), else it is removed.
    Temporary directories of the same target that a killed run left behind are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # left by a run that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path, obj):
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_jsonl(path, rows):
    with atomic_path(path) as tmp, jsonlines.open(tmp, "w", dumps=_dumps) as writer:
        writer.write_all(rows)


@contextlib.contextmanager
def jsonl_appender(path):
    """An append-only JSONL log: yields append(row), which writes one line and syncs it to disk before returning,
    so a killed run loses at most its torn last line (read_jsonl_lines reports it)."""
    with open(path, "a", encoding="utf-8") as f, jsonlines.Writer(f, dumps=_dumps, flush=True) as writer:
        def append(row):
            writer.write(row)
            os.fsync(f.fileno())
        yield append


def _read_text(path, errors="strict"):
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file.")
    try:
        return path.read_text(encoding="utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start}).") from None


def read_json(path):
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON (line {e.lineno}: {e.msg}).") from None


def read_jsonl_lines(path, errors="strict"):
    """Yield (line_number, parsed object or None, error message or None) for each non-blank line; errors="replace"
    reads a file whose last line a killed writer tore inside a UTF-8 character."""
    # lines end at "\n" only (JSON Lines; read_text has turned "\r\n" into "\n"): str.splitlines() would also split
    # inside a string holding U+2028, U+0085 and the like, which the writer keeps as they are (ensure_ascii=False)
    lines = [(number, line) for number, line in enumerate(_read_text(path, errors).split("\n"), start=1)
             if line.strip()]
    reader = jsonlines.Reader((line for _, line in lines), loads=json.loads)  # the k-th read: the k-th line
    for number, _ in lines:
        try:
            yield number, reader.read(allow_none=True), None
        except jsonlines.InvalidLineError as e:
            yield number, None, f"not valid JSON ({getattr(e.__cause__, 'msg', e)})"


def read_jsonl(path):
    """Read a JSON Lines file strictly: the first bad line is an error."""
    rows = []
    for number, obj, error in read_jsonl_lines(path):
        if error:
            raise InputError(f"{path}, line {number}: {error}.")
        rows.append(obj)
    return rows

import json

import pytest

from stages.common.io import InputError, atomic_dir, read_json, read_jsonl, read_jsonl_lines, write_json, write_jsonl


def test_write_json_roundtrip_and_no_temporary_left(tmp_path):
    write_json(tmp_path / "a" / "x.json", {"k": [1, 2], "name": "Zoë"})
    assert read_json(tmp_path / "a" / "x.json") == {"k": [1, 2], "name": "Zoë"}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.json"]


def test_failed_write_leaves_the_previous_file_untouched(tmp_path):
    target = tmp_path / "x.json"
    write_json(target, {"v": 1})
    with pytest.raises(TypeError):
        write_json(target, {"v": object()})  # not serialisable: fails midway
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_failed_atomic_dir_keeps_the_old_directory(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("crash")
    assert (target / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_jsonl_roundtrip(tmp_path):
    rows = [{"a": 1}, {"b": "two"}]
    write_jsonl(tmp_path / "r.jsonl", rows)
    assert read_jsonl(tmp_path / "r.jsonl") == rows


def test_jsonl_keeps_line_separators_inside_strings_and_reads_crlf(tmp_path):
    """Text a model generates can hold U+2028, U+2029, U+0085 or a form feed; written as they are, they must not end
    a line when read (str.splitlines() would split there). Lines written on Windows end in CRLF."""
    rows = [{"text": "one\u2028two\u2029three\x85four\x0cfive\x1cend"}, {"text": "next"}]
    write_jsonl(tmp_path / "r.jsonl", rows)
    assert (tmp_path / "r.jsonl").read_text(encoding="utf-8").count("\n") == 2
    assert read_jsonl(tmp_path / "r.jsonl") == rows
    (tmp_path / "crlf.jsonl").write_bytes(b'{"a": 1}\r\n{"b": 2}\r\n')
    assert [(n, obj) for n, obj, _ in read_jsonl_lines(tmp_path / "crlf.jsonl")] == [(1, {"a": 1}), (2, {"b": 2})]


def test_bad_jsonl_line_is_reported_with_its_number(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n\n{oops\n')
    assert [(n, e is not None) for n, _, e in read_jsonl_lines(path)] == [(1, False), (3, True)]
    with pytest.raises(InputError, match=r"line 3"):
        read_jsonl(path)


def test_non_utf8_and_missing_files_are_input_errors(tmp_path):
    path = tmp_path / "bin.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match="not UTF-8"):
        read_json(path)
    with pytest.raises(InputError, match="no such file"):
        read_json(tmp_path / "missing.json")

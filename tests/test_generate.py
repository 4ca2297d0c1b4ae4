import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from stages.cli import main
from stages.common.retry import GiveUp, is_transient, with_retries
from stages.generate.backends import TemplateBackend, TinkerBackend
from stages.generate.facts import NAME_CAPACITY, patient_items, sample_patients
from stages.generate.llm import missing_key_facts, note_prompt, parse_note
from stages.generate.run import resume_log, run_generation
from tests.fake_tinker import FakeSamplingClient, RateLimitError, StatusError, good_note

TINKER = {"backend": "tinker", "model": "m"}


def read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_template_generation_is_byte_identical_for_a_seed(tmp_path):
    runner = CliRunner()
    for name in ("a.jsonl", "b.jsonl"):
        result = runner.invoke(main, ["generate", "--n-record", "25", "--seed", "3", "--output", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    other = tmp_path / "c.jsonl"
    runner.invoke(main, ["generate", "--n_record", "25", "--seed", "4", "--output", str(other)])
    assert other.read_bytes() != (tmp_path / "a.jsonl").read_bytes()


def test_records_have_every_field_in_id_order(tmp_path):
    out = tmp_path / "n.jsonl"
    CliRunner().invoke(main, ["generate", "--n-record", "300", "--output", str(out)])
    records = read(out)
    assert [r["id"] for r in records] == [f"note-{i:05d}" for i in range(1, 301)]
    for r in records:
        for field in ("id", "client_name", "date_of_birth", "date", "subjective", "objective", "assessment",
                      "plan", "facts"):
            assert r[field]
        assert r["date"] > r["date_of_birth"]


def test_names_are_unique_up_to_ten_thousand_patients():
    assert len({p["client_name"] for p in sample_patients(10_000, seed=1)}) == 10_000
    with pytest.raises(ValueError, match="distinct names"):
        sample_patients(NAME_CAPACITY, seed=1)


def test_a_smaller_run_is_a_prefix_of_a_larger_one():
    assert patient_items(50, seed=9) == patient_items(120, seed=9)[:50]


def test_each_template_note_states_its_key_facts():
    for _rid, facts, note, _ in TemplateBackend(2).write(patient_items(300, seed=2)):
        assert facts["diagnosis"] in note["assessment"] and facts["medication"] in note["plan"]
        assert facts["complaint"] in note["subjective"] and facts["vitals"]["blood_pressure"] in note["objective"]
        for key in ("allergy", "city", "occupation"):
            assert facts[key] in note["subjective"], key
        assert facts["physician"] in note["plan"]


def test_the_probed_facts_beside_the_condition_are_drawn_independently():
    """Allergy, physician, city and occupation carry information of their own: over 3,000 patients none depends on
    the condition or on another (chi-square test of independence) and each spreads over its whole pool."""
    import itertools

    from scipy.stats import chi2_contingency

    from stages.generate.facts import ALLERGIES, CITIES, OCCUPATIONS, PHYSICIANS

    facts = [f for _, f in patient_items(3000, seed=11)]
    for key, pool in (("allergy", ALLERGIES), ("physician", PHYSICIANS), ("city", CITIES),
                      ("occupation", OCCUPATIONS)):
        assert {f[key] for f in facts} == set(pool), key
    for a, b in itertools.combinations(["diagnosis", "allergy", "physician", "city", "occupation"], 2):
        rows, cols = sorted({f[a] for f in facts}), sorted({f[b] for f in facts})
        table = [[sum(1 for f in facts if f[a] == r and f[b] == c) for c in cols] for r in rows]
        assert chi2_contingency(table).pvalue > 1e-4, (a, b)


def test_phrasing_varies_between_notes():
    notes = [note for _, facts, note, _ in TemplateBackend(5).write(patient_items(100, seed=5))]
    assert len({n["objective"].split(" ")[0] for n in notes}) >= 3
    assert len({n["plan"].split(" ")[0] for n in notes}) >= 3


def test_parse_note_finds_four_sections_or_none():
    text = "**Subjective:** a b\nObjective: c\n## Assessment: d\nPlan: e f\n"
    assert parse_note(text) == {"subjective": "a b", "objective": "c", "assessment": "d", "plan": "e f"}
    assert parse_note("Subjective: a\nObjective: b\nPlan: c") is None


def test_rerun_keeps_existing_notes_and_generates_only_missing_ids(tmp_path):
    out = tmp_path / "n.jsonl"
    first = FakeSamplingClient()
    items = patient_items(30, seed=1)
    run_generation(items[:12], TinkerBackend("m", "k", 1, client=first), TINKER, out, progress=False)
    assert first.calls == 12
    second = FakeSamplingClient()
    summary = run_generation(items, TinkerBackend("m", "k", 1, client=second), TINKER, out, progress=False)
    assert second.calls == 18 and summary["reused"] == 12 and summary["new"] == 18
    assert [r["id"] for r in read(out)] == [rid for rid, _ in items]


def test_torn_last_line_and_foreign_records_are_set_aside(tmp_path):
    out = tmp_path / "n.jsonl"
    items = patient_items(10, seed=1)
    run_generation(items[:5], TinkerBackend("m", "k", 1, client=FakeSamplingClient()), TINKER, out, progress=False)
    log = resume_log(out)  # what a killed run leaves: the log, not the output (written whole at the end)
    out.unlink()
    lines = log.read_text().splitlines()
    foreign = json.loads(lines[1])
    foreign["facts"]["diagnosis"] = "something else"
    log.write_text("\n".join([lines[0], json.dumps(foreign), *lines[2:]]) + '\n{"id": "note-00006", "cli')
    client = FakeSamplingClient()
    summary = run_generation(items, TinkerBackend("m", "k", 1, client=client), TINKER, out, progress=False)
    assert summary["set_aside"] == 2 and summary["reused"] == 4 and client.calls == 6
    records = read(out)
    assert [r["id"] for r in records] == [rid for rid, _ in items]
    assert records[1]["facts"] == items[1][1]


def test_generation_killed_midway_resumes_without_duplicates_or_losses(tmp_path):
    out = tmp_path / "n.jsonl"
    code = (
        "import sys; sys.path.insert(0, sys.argv[2])\n"
        "from stages.generate.backends import TinkerBackend\n"
        "from stages.generate.facts import patient_items\n"
        "from stages.generate.run import run_generation\n"
        "from tests.fake_tinker import FakeSamplingClient\n"
        "run_generation(patient_items(40, 1), TinkerBackend('m', 'k', 1, concurrency=2,\n"
        "               client=FakeSamplingClient(delay=0.1)), {'backend': 'tinker', 'model': 'm'}, sys.argv[1],\n"
        "               progress=False)\n")
    root = str(Path(__file__).resolve().parents[1])
    process = subprocess.Popen([sys.executable, "-c", code, str(out), root], start_new_session=True)
    deadline = time.time() + 60
    log = resume_log(out)
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 8):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    written = len(log.read_text().splitlines())
    assert 8 <= written < 40
    assert not out.exists()  # the output is written whole, at the end
    client = FakeSamplingClient()
    items = patient_items(40, 1)
    summary = run_generation(items, TinkerBackend("m", "k", 1, client=client), TINKER, out, progress=False)
    records = read(out)
    assert [r["id"] for r in records] == [rid for rid, _ in items]
    assert client.calls == 40 - summary["reused"] and summary["reused"] >= written - 1


def test_a_rerun_after_dvc_removed_the_output_pays_for_nothing_it_already_has(tmp_path):
    """DVC removes a stage's outputs before it runs it again (generate's output is no `persist` output, so that the
    run-cache can restore it): the notes come back from the log beside the output, none is requested twice."""
    out, items = tmp_path / "n.jsonl", patient_items(12, 4)
    first = run_generation(items, TinkerBackend("m", "k", 1, client=FakeSamplingClient()), TINKER, out, progress=False)
    before = out.read_bytes()
    out.unlink()
    client = FakeSamplingClient()
    more = patient_items(15, 4)  # and three patients more
    summary = run_generation(more, TinkerBackend("m", "k", 1, client=client), TINKER, out, progress=False)
    assert first["new"] == 12 and summary["reused"] == 12 and client.calls == 3
    assert out.read_bytes().startswith(before) and [r["id"] for r in read(out)] == [rid for rid, _ in more]


def test_transient_errors_are_retried_with_backoff():
    waits, messages = [], []

    def script(prompt, n):
        if n <= 2:
            raise RateLimitError()
        return good_note(prompt)

    client = FakeSamplingClient(script)
    backend = TinkerBackend("m", "k", 1, client=client, report=messages.append, sleep=waits.append)
    ((rid, facts, note, reason),) = list(backend.write(patient_items(1, 3)))
    assert note and reason is None and client.calls == 3
    assert len(waits) == 2 and 0 <= waits[0] <= 1.0 and 0 <= waits[1] <= 2.0
    assert "retry 1/5" in messages[0] and "RateLimitError" in messages[0]


def test_persistent_errors_give_up_with_a_clear_message_and_others_are_not_retried():
    calls = []
    with pytest.raises(GiveUp, match="sampling failed 4 times; last error: boom"):
        with_retries(lambda: calls.append(1) or (_ for _ in ()).throw(StatusError(503, "boom")),
                     what="sampling", is_transient=is_transient, attempts=4, sleep=lambda s: None)
    assert len(calls) == 4
    calls.clear()
    with pytest.raises(StatusError, match="bad request"):
        with_retries(lambda: calls.append(1) or (_ for _ in ()).throw(StatusError(400, "bad request")),
                     what="sampling", is_transient=is_transient, sleep=lambda s: None)
    assert len(calls) == 1
    assert is_transient(TimeoutError()) and not is_transient(ValueError())


def test_notes_missing_key_facts_are_retried_then_dropped_and_counted(tmp_path):
    items = patient_items(4, 5)
    unlucky = items[1][1]["client_name"]
    first_try = set()

    def script(prompt, n):
        note = good_note(prompt)
        name = prompt.split("Patient: ")[1].split(",")[0]
        if name == unlucky or name not in first_try:  # the unlucky patient never, the others on a second try
            first_try.add(name)
            return note.replace(note.split("Assessment: ")[1].split("\n")[0], "unclear")
        return note

    client = FakeSamplingClient(script)
    summary = run_generation(items, TinkerBackend("m", "k", 5, client=client, concurrency=1, max_attempts=3),
                             TINKER, tmp_path / "n.jsonl", progress=False)
    assert summary["dropped"] == {items[1][0]: "note does not state the diagnosis"}
    assert summary["written"] == 3 and client.calls == 3 * 2 + 3
    records = read(tmp_path / "n.jsonl")
    assert [r["id"] for r in records] == [items[0][0], items[2][0], items[3][0]]
    for record in records:
        assert record["facts"]["diagnosis"] in record["assessment"]


def test_prompt_carries_the_facts():
    (_, facts), = patient_items(1, 8)
    prompt = note_prompt(facts)
    for value in (facts["client_name"], facts["diagnosis"], facts["medication"], facts["date"]):
        assert value in prompt


def test_tinker_backend_needs_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    result = CliRunner().invoke(main, ["generate", "--backend", "tinker", "--output", str(tmp_path / "n.jsonl")])
    assert result.exit_code == 2 and "set TINKER_API_KEY" in result.output
    assert not (tmp_path / "n.jsonl").exists()


def test_key_fact_check_names_what_is_missing():
    (_, facts), = patient_items(1, 4)
    note = parse_note(good_note(note_prompt(facts)))
    assert missing_key_facts(note, facts) == []
    note["plan"] = "rest"
    assert missing_key_facts(note, facts) == ["medication", "physician"]


def test_hf_backend_drops_and_counts_replies_that_are_not_notes(tmp_path, tiny_model_dir):
    """A random tiny model writes no SOAP note: every attempt fails the check, and each note is dropped."""
    from stages.generate.backends import HFBackend

    backend = HFBackend(tiny_model_dir, seed=1, batch_size=3, max_attempts=2, max_new_tokens=8)
    summary = run_generation(patient_items(4, 1), backend, {"backend": "hf", "model": "tiny"}, tmp_path / "n.jsonl",
                             progress=False)
    assert summary["written"] == 0 and len(summary["dropped"]) == 4
    assert set(summary["dropped"].values()) == {"reply is not a four-section SOAP note"}
    assert (tmp_path / "n.jsonl").read_text() == ""


class RefusingService:
    """A Tinker service on loopback that answers every request with `status` (or never answers: 'stall'),
    recording when each request came."""

    def __init__(self, status):
        import threading
        import time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.times = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                service.times.append(time.monotonic())
                if status == "stall":
                    time.sleep(30)
                    return
                body = b'{"error": "scripted"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("status", [429, 500, "stall"])
def test_a_tinker_service_that_refuses_is_retried_reported_and_given_up_in_one_sentence(status, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    service = RefusingService(status)
    env = {**os.environ, "TINKER_BASE_URL": service.url, "TINKER_API_KEY": "tml-fake-key-for-the-test",
           "UNFORGOTTEN_TINKER_TIMEOUT": "6"}
    try:
        result = subprocess.run([str(Path(sys.executable).parent / "unforgotten"), "generate", "--backend", "tinker",
                                 "--n-record", "2", "--output", str(tmp_path / "notes.jsonl")], env=env,
                                capture_output=True, text=True, timeout=120)
    finally:
        service.close()
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"Error: GiveUp: Tinker ({service.url}) did not give a sampling client for ")
    assert "within 6 s: it is rate-limiting, failing or unreachable; try again later." in lines[-1]
    assert any(line.startswith(f"Tinker: waiting 2 s for {service.url}") for line in lines), lines
    assert "Traceback" not in result.stderr and "tml-fake-key-for-the-test" not in result.stdout + result.stderr
    assert not (tmp_path / "notes.jsonl").exists()
    if status != "stall":  # the SDK's own retries, each wait longer than the one before (exponential backoff)
        gaps = [b - a for a, b in zip(service.times, service.times[1:], strict=False)]
        assert len(gaps) >= 3 and gaps[0] < gaps[1] < gaps[2], gaps

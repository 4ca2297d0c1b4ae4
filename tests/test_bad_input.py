"""One test per row of docs/bad-input.md: the stage command fails with its exit code and one sentence naming what
is wrong, prints no traceback, and leaves every file in the work directory as it was (nothing new, nothing changed).
"""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from stages.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory, medical_dir, notes_file, tiny_model_dir):
    """A work directory with good inputs (notes, splits, a tiny model, an adapter-less directory) and bad ones,
    plus earlier outputs that a failed run must leave untouched."""
    w = tmp_path_factory.mktemp("bad-input")
    good = json.loads((medical_dir / "med_synthetic_forget10.json").read_text())
    retain = json.loads((medical_dir / "med_synthetic_full_minus_forget10.json").read_text())
    files = {
        "notes.jsonl": notes_file.read_text(),
        "forget.json": json.dumps(good),
        "retain.json": json.dumps(retain),
        "empty.json": "[]",
        "empty.jsonl": "",
        "blank.json": "",
        "object.json": json.dumps({"records": good}),
        "not-json.json": '[{"id": "note-1",\n  "client_name": oops}]',
        "missing-field.json": json.dumps([good[0], {k: v for k, v in good[1].items() if k != "plan"}]),
        "blank-field.json": json.dumps([{**good[0], "subjective": "  "}]),
        "duplicate-ids.json": json.dumps([good[0], good[0]]),
        "bad-probe.json": json.dumps([{**good[0], "probes": [{**good[0]["probes"][0], "perturbed_answers": []}]}]),
        "bad-notes.jsonl": '{"id": "a"}\n{"client_name": 3}\nnot json\n',
        "corpus-no-text.jsonl": '{"body": "A paper without a text field."}\n',
        "params-typo.yaml": (ROOT / "params.yaml").read_text().replace("  learning-rate: 0.001\n  lr-scheduler",
                                                                        "  lerning-rate: 0.001\n  lr-scheduler"),
        "params-top-typo.yaml": (ROOT / "params.yaml").read_text().replace("\nseed: 42", "\nsede: 42"),
        "params-method.yaml": (ROOT / "params.yaml").read_text().replace("methods: [grad_ascent, npo]",
                                                                          "methods: [grad_ascent, nop]"),
        "params-shared.yaml": (ROOT / "params.yaml").read_text().replace(
            "  train-system-prompt: empty", "  with-probes: false\n  train-system-prompt: empty"),
        "a-file": "not a directory\n",
        "out/earlier.json": '{"kept": true}\n',
    }
    for name, text in files.items():
        (w / name).parent.mkdir(parents=True, exist_ok=True)
        (w / name).write_text(text)
    (w / "latin1.json").write_bytes('[{"id": "é"}]'.encode("latin-1"))
    (w / "not-a-model").mkdir()
    (w / "oracle").mkdir()  # an adapter directory as far as the checks before loading go
    (w / "oracle/adapter_config.json").write_text("{}")
    remote = w / "remote-code-model"
    remote.mkdir()
    for f in Path(tiny_model_dir).iterdir():
        (remote / f.name).write_bytes(f.read_bytes())
    config = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "m.Model"}}))
    return w


def snapshot(directory):
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


# id -> (arguments; {w} is the work directory, {model} the tiny model), exit code, what the message must say.
CASES = {
    "missing-input": (["prepare-medical", "-i", "{w}/absent.jsonl", "-o", "{w}/out"], 1,
                      r"absent\.jsonl: no such file\."),
    "empty-input": (["prepare-medical", "-i", "{w}/empty.jsonl", "-o", "{w}/out"], 1,
                    r"empty\.jsonl: no valid record \(0 dropped\)\."),
    "empty-json": (["finetune", "--data-file", "{w}/blank.json", "--base-model", "{model}", "--output-dir",
                    "{w}/out/ft"], 1, r"blank\.json: not valid JSON \(line 1"),
    "non-utf8-input": (["finetune", "--data-file", "{w}/latin1.json", "--base-model", "{model}", "--output-dir",
                        "{w}/out/ft"], 1, r"latin1\.json: not UTF-8 text \(byte 9\)\."),
    "non-json-input": (["unlearn", "--forget-file", "{w}/not-json.json", "--retain-file", "{w}/retain.json",
                        "--oracle", "{w}/not-a-model", "--base-model", "{model}", "--method", "npo",
                        "--output-dir", "{w}/out/u"], 1, r"not-json\.json: not valid JSON \(line 2: Expecting value\)"),
    "not-a-list": (["finetune", "--data-file", "{w}/object.json", "--base-model", "{model}", "--output-dir",
                    "{w}/out/ft"], 1, r"object\.json: expected a JSON list of records, found a dict\."),
    "missing-field": (["finetune", "--data-file", "{w}/missing-field.json", "--base-model", "{model}",
                       "--output-dir", "{w}/out/ft"], 1,
                      r"missing-field\.json, record 2 \('note-\d+'\): field 'plan' is missing or not a non-empty "
                      r"string\."),
    "blank-field": (["unlearn", "--forget-file", "{w}/blank-field.json", "--retain-file", "{w}/retain.json",
                     "--oracle", "{w}/not-a-model", "--base-model", "{model}", "--method", "npo", "--output-dir",
                     "{w}/out/u"], 1, r"blank-field\.json, record 1 \('note-\d+'\): field 'subjective'"),
    "malformed-probe": (["evaluate", "--forget-file", "{w}/bad-probe.json", "--retain-file", "{w}/retain.json",
                         "--base-model", "{model}", "--run-name", "x", "--output-dir", "{w}/out/e"], 1,
                        r"bad-probe\.json, record 1 \('note-\d+'\), probe 1: field 'perturbed_answers' is missing or "
                        r"malformed\."),
    "malformed-notes": (["prepare-medical", "-i", "{w}/bad-notes.jsonl", "-o", "{w}/out"], 1,
                        r"bad-notes\.jsonl: no valid record \(3 dropped\)\."),
    "duplicate-ids": (["unlearn", "--forget-file", "{w}/duplicate-ids.json", "--retain-file", "{w}/retain.json",
                       "--oracle", "{w}/not-a-model", "--base-model", "{model}", "--method", "npo", "--output-dir",
                       "{w}/out/u"], 1, r"duplicate-ids\.json, record 2: duplicate id 'note-\d+'\."),
    "empty-forget-set": (["unlearn", "--forget-file", "{w}/empty.json", "--retain-file", "{w}/retain.json",
                          "--oracle", "{w}/not-a-model", "--base-model", "{model}", "--method", "npo", "--output-dir",
                          "{w}/out/u"], 1, r"empty\.json: the forget set is empty\."),
    "forget-ratio-zero": (["prepare-medical", "-i", "{w}/notes.jsonl", "-o", "{w}/out", "--forget-ratios", "0"], 2,
                          r"Invalid value for '--forget-ratios'[^:]*.*0\.0 is not between 0 and 1 \(exclusive\)"),
    "forget-ratio-one": (["prepare-wmdp", "--source", "{w}/notes.jsonl", "--output-dir", "{w}/out",
                          "--forget-ratios", "1"], 2, r"1\.0 is not between 0 and 1 \(exclusive\)"),
    "forget-ratio-not-a-number": (["prepare-medical", "-i", "{w}/notes.jsonl", "-o", "{w}/out", "--forget-ratios",
                                   "ten"], 2, r"'ten' is not a valid float"),
    "forget-ratio-not-whole-percent": (["prepare-medical", "-i", "{w}/notes.jsonl", "-o", "{w}/out",
                                        "--forget-ratios", "0.125"], 2, r"0\.125 is not a whole percentage"),
    "holdout-ratio-one": (["prepare-medical", "-i", "{w}/notes.jsonl", "-o", "{w}/out", "--holdout-ratio", "1"], 2,
                          r"Invalid value for '--holdout-ratio'[^:]*"),
    "non-positive-count": (["generate", "--n-record", "0", "--output", "{w}/out/notes.jsonl"], 2,
                           r"Invalid value for '--n-record'[^:]*.*0 is not in the range x>=1"),
    "non-positive-size": (["finetune", "--data-file", "{w}/forget.json", "--base-model", "{model}", "--output-dir",
                           "{w}/out/ft", "--batch-size", "0"], 2, r"Invalid value for '--batch-size'[^:]*"),
    "non-positive-target-size": (["prepare-wmdp", "--source", "{w}/notes.jsonl", "--output-dir", "{w}/out",
                                  "--target-size", "-5"], 2, r"Invalid value for '--target-size'[^:]*"),
    "non-positive-learning-rate": (["finetune", "--data-file", "{w}/forget.json", "--base-model", "{model}",
                                    "--output-dir", "{w}/out/ft", "--learning-rate", "0"], 2,
                                   r"Invalid value for '--learning-rate'[^:]*.*0\.0 is not in the range x>0"),
    "negative-unlearn-learning-rate": (["unlearn", "--forget-file", "{w}/forget.json", "--retain-file",
                                        "{w}/retain.json", "--oracle", "{w}/not-a-model", "--base-model", "{model}",
                                        "--method", "npo", "--output-dir", "{w}/out/u", "--learning-rate", "-1e-3"], 2,
                                       r"Invalid value for '--learning-rate'[^:]*"),
    "non-positive-relearn-learning-rate": (["evaluate", "--forget-file", "{w}/forget.json", "--retain-file",
                                            "{w}/retain.json", "--base-model", "{model}", "--run-name", "x",
                                            "--output-dir", "{w}/out/e", "--relearn-learning-rate", "0"], 2,
                                           r"Invalid value for '--relearn-learning-rate'[^:]*"),
    "unknown-backend": (["generate", "--backend", "gpt", "--output", "{w}/out/notes.jsonl"], 2,
                        r"Invalid value for '--backend'[^:]*: 'gpt' is not one of 'template', 'tinker', 'hf'"),
    "unknown-method": (["unlearn", "--forget-file", "{w}/forget.json", "--retain-file", "{w}/retain.json",
                        "--oracle", "{w}/not-a-model", "--base-model", "{model}", "--method", "nop", "--output-dir",
                        "{w}/out/u"], 2, r"Invalid value for '--method': 'nop' is not one of 'grad_ascent', "),
    "rmu-layer-beyond-the-model": (["unlearn", "--forget-file", "{w}/forget.json", "--retain-file", "{w}/retain.json",
                                    "--oracle", "{w}/oracle", "--base-model", "{model}", "--method", "rmu",
                                    "--rmu-layer", "5", "--output-dir", "{w}/out/u"], 2,
                                   r"Invalid value for --rmu-layer: 5 is beyond the model's 2 layers "
                                   r"\(numbered 0 to 1\)"),
    "unknown-quant-bits": (["evaluate", "--forget-file", "{w}/forget.json", "--retain-file", "{w}/retain.json",
                            "--base-model", "{model}", "--run-name", "x", "--output-dir", "{w}/out/e",
                            "--quant-bits", "3"], 2,
                           r"Invalid value for '--quant-bits'[^:]*: '3' is not one of '8', '4'"),
    "output-dir-is-a-file": (["finetune", "--data-file", "{w}/forget.json", "--base-model", "{model}",
                              "--output-dir", "{w}/a-file"], 2, r"Directory '.*a-file' is a file\."),
    "output-file-is-a-directory": (["generate", "--n-record", "5", "--output", "{w}/out"], 2,
                                   r"File '.*out' is a directory\."),
    "model-path-not-a-model": (["finetune", "--data-file", "{w}/forget.json", "--base-model", "{w}/not-a-model",
                                "--output-dir", "{w}/out/ft"], 1,
                               r"not-a-model: is not a model directory \(no config\.json\)\."),
    "adapter-not-an-adapter": (["unlearn", "--forget-file", "{w}/forget.json", "--retain-file", "{w}/retain.json",
                                "--oracle", "{w}/not-a-model", "--base-model", "{model}", "--method", "npo",
                                "--output-dir", "{w}/out/u"], 1,
                               r"not-a-model: is not a LoRA adapter directory \(no adapter_config\.json\)\."),
    "unreachable-hub-id-offline": (["finetune", "--data-file", "{w}/forget.json", "--base-model",
                                    "no-such-org/no-such-model", "--output-dir", "{w}/out/ft"], 1,
                                   r"no-such-org/no-such-model: not a local path, and not in the hub cache while "
                                   r"offline \(HF_HUB_OFFLINE=1\)\."),
    "remote-code-without-flag": (["finetune", "--data-file", "{w}/forget.json", "--base-model",
                                  "{w}/remote-code-model", "--output-dir", "{w}/out/ft"], 1,
                                 r"remote-code-model: runs its own code \('auto_map' in config\.json\); pass "
                                 r"--trust-remote-code"),
    "8bit-and-4bit": (["finetune", "--data-file", "{w}/forget.json", "--base-model", "{model}", "--output-dir",
                       "{w}/out/ft", "--use-8bit", "--use-4bit"], 1, r"--use-8bit and --use-4bit exclude each other\."),
    "corpus-without-text": (["prepare-wmdp", "--source", "{w}/corpus-no-text.jsonl", "--output-dir", "{w}/out"], 1,
                            r"corpus-no-text\.jsonl, row 1: no 'text' string\."),
    "oracle-without-retain": (["evaluate", "--forget-file", "{w}/forget.json", "--retain-file", "{w}/retain.json",
                               "--base-model", "{model}", "--run-name", "x", "--output-dir", "{w}/out/e",
                               "--oracle", "{w}/out"], 2, r"--oracle and --retain go together"),
    "verdict-without-attacks": (["evaluate", "--forget-file", "{w}/forget.json", "--retain-file", "{w}/retain.json",
                                 "--base-model", "{model}", "--run-name", "x", "--output-dir", "{w}/out/e",
                                 "--oracle", "{w}/out", "--retain", "{w}/out"], 2, r"--oracle and --retain need "
                                                                                  r"--attacks"),
    "report-without-evaluations": (["report", "--eval-dir", "{w}/out", "--output-dir", "{w}/out/report"], 1,
                                   r"out: no \*/results\.jsonl to report\."),
}
# params.yaml is read by `python -m stages.profiles check` (make run runs it before dvc).
PARAMS_CASES = {
    "params-unknown-key": ("params-typo.yaml",
                           r"'finetune\.lerning-rate' is not a known key \(did you mean 'finetune\.learning-rate'\?\)"),
    "params-unknown-top-level-key": ("params-top-typo.yaml", r"'sede' is not a known key \(did you mean 'seed'\?\)"),
    "params-unknown-method": ("params-method.yaml", r"methods: 'nop' is not a method \(grad_ascent, "),
    "params-shared-key-in-a-stage": ("params-shared.yaml", r"'finetune\.with-probes' is set once for every stage, "
                                                           r"as 'training\.with-probes'\."),
}


def one_sentence_error(output):
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    return errors[0]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_with_one_sentence_and_writes_nothing(case, work, tiny_model_dir):
    args, code, message = CASES[case]
    before = snapshot(work)
    result = CliRunner().invoke(main, [a.format(w=work, model=tiny_model_dir) for a in args])
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert re.search(message, one_sentence_error(result.output)), result.output
    assert snapshot(work) == before


@pytest.mark.parametrize("case", PARAMS_CASES)
def test_bad_params_file_fails_with_one_sentence(case, work):
    name, message = PARAMS_CASES[case]
    before = snapshot(work)
    result = subprocess.run([sys.executable, "-m", "stages.profiles", "check", str(work / name)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert re.search(message, one_sentence_error(result.stderr)), result.stderr
    assert snapshot(work) == before


def test_the_shipped_params_file_passes_the_check():
    result = subprocess.run([sys.executable, "-m", "stages.profiles", "check"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_every_row_of_the_documented_table_has_its_test_and_back():
    table = (ROOT / "docs/bad-input.md").read_text()
    rows = set(re.findall(r"^\| `([a-z0-9-]+)` \|", table, flags=re.M))
    assert rows == set(CASES) | set(PARAMS_CASES)

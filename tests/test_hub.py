"""Hub downloads against a hub on loopback (tests/fake_hub.py) that answers 429, 500 and too slowly before it
answers: a real stage process retries with backoff, says what it waits for, and gives up with one sentence."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_hub import FakeHub
from tests.micro import write_custom_code_model

BIN = Path(sys.executable).parent


def finetune(tmp_path, hub, model, data, extra=(), **env):
    """`unforgotten finetune` on the hub's model (one short epoch), online, with a fresh hub cache."""
    environment = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    environment.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), UNFORGOTTEN_HUB_TIMEOUT="1",
                       UNFORGOTTEN_RETRY_DELAY="0.05", HF_HUB_DISABLE_TELEMETRY="1", **env)
    command = [str(BIN / "unforgotten"), "finetune", "--data-file", str(data), "--base-model", model,
               "--output-dir", str(tmp_path / "adapter"), "--num-epochs", "1", "--batch-size", "8",
               "--max-seq-length", "192", "--no-with-probes", *extra]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def data(tmp_path_factory, medical_dir):
    path = tmp_path_factory.mktemp("hub-data") / "train.json"
    path.write_text(json.dumps(json.loads((medical_dir / "med_synthetic_forget10.json").read_text())[:2]))
    return path


def test_download_retries_rate_limits_server_errors_and_timeouts_then_trains(tmp_path, tiny_model_dir, data):
    with FakeHub({"org/tiny": tiny_model_dir}, failures=[429, 500, "timeout", 503], stall=4) as hub:
        result = finetune(tmp_path, hub, "org/tiny", data)
    assert result.returncode == 0, result.stderr
    assert hub.statuses()[:5] == [429, 500, "timeout", 503, 200]
    waits = [line for line in result.stderr.splitlines() if line.startswith("downloading org/tiny from the hub: ")]
    assert [w.split(": ", 1)[1].split(";")[0] for w in waits] == ["HTTP 429", "HTTP 500", "timed out after 1 s",
                                                                  "HTTP 503"]
    assert all(f"retry {n}/5 in " in w for n, w in enumerate(waits, start=1))
    assert (tmp_path / "adapter/adapter_model.safetensors").is_file()


def test_a_hub_that_keeps_failing_is_given_up_in_one_sentence_and_nothing_is_written(tmp_path, tiny_model_dir,
                                                                                      data):
    with FakeHub({"org/tiny": tiny_model_dir}, failures=[500] * 50) as hub:
        result = finetune(tmp_path, hub, "org/tiny", data, UNFORGOTTEN_HUB_ATTEMPTS="3")
    assert result.returncode == 1
    assert len(hub.requests) == 3
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: GiveUp: downloading org/tiny from the hub: gave up after 3 attempts (last: HTTP 500); the hub is "
        "rate-limiting, failing or too slow, try again later. (run `unforgotten --debug ...` or set "
        "UNFORGOTTEN_DEBUG=1 for the traceback).")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "adapter").exists()


def test_an_unknown_repository_is_one_sentence_without_retries(tmp_path, tiny_model_dir, data):
    with FakeHub({"org/tiny": tiny_model_dir}) as hub:
        result = finetune(tmp_path, hub, "org/absent", data)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: org/absent: no such repository on the hub (or it is private: set HF_TOKEN).")
    assert len(hub.requests) == 1


def test_an_unreachable_hub_fails_at_once(tmp_path, data):
    hub = FakeHub({})  # bound but never started: the port refuses... once closed
    hub.server.server_close()
    result = finetune(tmp_path, hub, "org/tiny", data)
    assert result.returncode == 1
    assert "org/tiny: cannot reach the hub" in result.stderr.strip().splitlines()[-1]


def test_transient_errors_are_recognised_through_the_libraries_wrappers():
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from stages.common.retry import is_transient

    class Response:
        def __init__(self, status_code):
            self.status_code = status_code
            self.headers, self.request, self.url = {}, None, "http://hub"

    def wrapped(status):
        try:
            try:
                raise HfHubHTTPError("hub said no", response=Response(status))
            except HfHubHTTPError as error:
                raise LocalEntryNotFoundError("could not locate the file") from error
        except LocalEntryNotFoundError as outer:
            return outer

    assert [is_transient(wrapped(s)) for s in (429, 500, 503, 404, 401)] == [True, True, True, False, False]
    assert is_transient(TimeoutError("read timed out"))
    assert not is_transient(ValueError("bad"))
    # A refused connection: retried for Tinker, not for the hub (unreachable means fail at once).
    refused = ConnectionRefusedError()
    assert is_transient(refused) and not is_transient(refused, connection_errors=False)


def test_a_hub_corpus_is_loaded_through_rate_limits_server_errors_and_timeouts(tmp_path):
    """prepare-wmdp --source hub: `datasets` against the hub on loopback, in the layout of cais/wmdp-corpora."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = tmp_path / "wmdp-corpora"
    (corpus / "bio-retain-corpus").mkdir(parents=True)
    (corpus / "README.md").write_text("---\nconfigs:\n- config_name: bio-retain-corpus\n  data_files:\n"
                                      "  - split: train\n    path: bio-retain-corpus/train-*\n---\n")
    papers = ["The first paper has one long sentence here. And a second one after it.",
              "The second paper says something else entirely, at length."]
    pq.write_table(pa.table({"text": papers}), corpus / "bio-retain-corpus/train-00000-of-00001.parquet")
    environment = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    with FakeHub({"cais/wmdp-corpora": corpus}, failures=[429, 500, "timeout", 503], stall=4) as hub:
        environment.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), UNFORGOTTEN_HUB_TIMEOUT="1",
                           UNFORGOTTEN_RETRY_DELAY="0.05", HF_HUB_DISABLE_TELEMETRY="1")
        result = subprocess.run([str(BIN / "unforgotten"), "prepare-wmdp", "--source", "hub", "--output-dir",
                                 str(tmp_path / "wmdp"), "--target-size", "3", "--forget-ratios", "0.5"],
                                env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert hub.statuses()[:4] == [429, 500, "timeout", 503] and 200 in hub.statuses()
    full = json.loads((tmp_path / "wmdp/wmdp_bio_full.json").read_text())
    assert len(full) == 3 and {r["source"] for r in full} == {"wmdp-bio-retain"}
    assert all(any(r["text"] in paper for paper in papers) for r in full)


def test_a_model_with_only_bin_weights_or_its_own_code_downloads_and_trains(tmp_path, tiny_model_dir, data):
    """The download takes a repository's *.safetensors where it has them and its *.bin (older checkpoints) where it
    has not, never both, and the model's own *.py, which then runs only with --trust-remote-code."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    bin_only = tmp_path / "bin-only"  # an older checkpoint: config, tokenizer and pytorch_model.bin
    shutil.copytree(tiny_model_dir, bin_only, ignore=shutil.ignore_patterns("*.safetensors"))
    state = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    torch.save({k: v for k, v in state.items() if k != "lm_head.weight"}, bin_only / "pytorch_model.bin")  # tied
    assert not list(bin_only.glob("*.safetensors")) and list(bin_only.glob("*.bin"))
    both = tmp_path / "both"
    shutil.copytree(tiny_model_dir, both)
    shutil.copy(next(bin_only.glob("*.bin")), both)
    custom = write_custom_code_model(tmp_path / "custom", tiny_model_dir)
    with FakeHub({"org/bin-only": bin_only, "org/both": both, "org/custom": custom}) as hub:
        trained = finetune(tmp_path / "a", hub, "org/bin-only", data)
        assert trained.returncode == 0, trained.stderr
        assert any(path.endswith(".bin") for _, path, _ in hub.requests)
        hub.requests.clear()
        trained = finetune(tmp_path / "b", hub, "org/both", data)
        assert trained.returncode == 0, trained.stderr
        fetched = [path for _, path, _ in hub.requests if "/resolve/" in path]
        assert any(p.endswith(".safetensors") for p in fetched) and not any(p.endswith(".bin") for p in fetched)
        refused = finetune(tmp_path / "c", hub, "org/custom", data)
        assert refused.returncode == 1 and "pass --trust-remote-code" in refused.stderr
        trusted = finetune(tmp_path / "d", hub, "org/custom", data, extra=["--trust-remote-code"])
        assert trusted.returncode == 0, trusted.stderr
    assert (tmp_path / "d" / "adapter" / "adapter_model.safetensors").is_file()

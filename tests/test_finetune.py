import json

import pytest
import torch
from click.testing import CliRunner

from stages.cli import main
from stages.finetune.train import lr_lambda


def test_schedule_warms_up_then_decays():
    cosine = lr_lambda("cosine", warmup_steps=2, total_steps=10)
    assert [cosine(0), cosine(1)] == [0.5, 1.0]
    assert cosine(2) == pytest.approx(1.0) and cosine(6) == pytest.approx(0.5) and cosine(10) == pytest.approx(0.0)
    linear = lr_lambda("linear", warmup_steps=0, total_steps=4)
    assert [linear(s) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, medical_dir):
    out = tmp_path_factory.mktemp("ft") / "oracle"
    result = CliRunner().invoke(main, [
        "finetune", "--data-file", str(medical_dir / "med_synthetic_forget10.json"), "--base-model", tiny_model_dir,
        "--output-dir", str(out), "--num-epochs", "8", "--batch-size", "2", "--gradient_accumulation_steps", "1",
        "--learning-rate", "2e-2", "--max-seq-length", "128", "--lora-targets", "q_proj,v_proj,o_proj,down_proj",
        "--lora-rank", "16"])
    assert result.exit_code == 0, result.output
    return out


def test_finetune_writes_a_peft_adapter_log_and_plot(trained, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), trained)
    assert any("lora_A" in name for name, _ in model.named_parameters())
    log = json.loads((trained / "train_log.json").read_text())
    assert set(log["steps"][0]) == {"step", "micro_batches", "loss", "learning_rate"}
    # what differs on every run lies beside the adapter, outside what DVC tracks
    timings = json.loads(trained.with_name(trained.name + ".timings.json").read_text())
    assert [s["step"] for s in timings["steps"]] == [s["step"] for s in log["steps"]]
    assert all(s["tokens_per_s"] > 0 and "peak_memory_gb" in s for s in timings["steps"])
    assert timings["device"] == "cpu" and timings["resumed_from_step"] == 0 and timings["seconds"] > 0
    from stages.common.models import resolve_precision

    assert log["precision"] == resolve_precision("auto", "cpu")  # the default, resolved on this machine
    assert not list(trained.glob("*.png"))  # report draws the loss curves (plots.py reruns no fine-tune)


def test_a_saved_adapter_names_its_base_as_the_user_did_not_by_this_machines_path(tiny_model_dir, tmp_path):
    """'embedded' loads from a cache under $HOME: neither the adapter's config nor PEFT's model card may carry that
    path, or the same weights would hash differently for every user."""
    from peft import get_peft_model

    from stages.common.models import load_model, lora_config, save_adapter

    model = get_peft_model(load_model(tiny_model_dir), lora_config(load_model(tiny_model_dir), 4, 8, "all-linear"))
    save_adapter(model, tmp_path / "adapter", "org/some-model")
    for name in ("README.md", "adapter_config.json"):
        text = (tmp_path / "adapter" / name).read_text()
        assert "org/some-model" in text and str(tiny_model_dir) not in text, name


def test_finetune_lowers_the_loss_on_its_data(trained):
    steps = json.loads((trained / "train_log.json").read_text())["steps"]
    first, last = steps[0]["loss"], sum(s["loss"] for s in steps[-4:]) / 4
    assert last < first - 1.0  # nats: from the random model's ~ln(vocab) towards the data


def test_adapter_changes_the_model_and_only_lora_weights_train(trained, tiny_model_dir):
    from stages.common.models import load_model

    base, tuned = load_model(tiny_model_dir), load_model(tiny_model_dir, adapter=str(trained))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert not torch.allclose(base(input_ids=ids).logits, tuned(input_ids=ids).logits)
    config = json.loads((trained / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_model_dir
    # Sorted, so equal weights always give byte-equal files (peft keeps the modules in a set).
    assert config["target_modules"] == ["down_proj", "o_proj", "q_proj", "v_proj"]


def test_lora_on_the_top_layers_adapts_every_linear_layer_there_and_nothing_below(tmp_path, tiny_model_dir,
                                                                                   medical_dir):
    from safetensors.torch import load_file

    from stages.common.models import load_model

    out = tmp_path / "top"
    args = ["finetune", "--data-file", str(medical_dir / "med_synthetic_forget10.json"), "--base-model",
            tiny_model_dir, "--num-epochs", "1", "--max-seq-length", "128", "--lora-top-layers"]
    result = CliRunner().invoke(main, [*args, "1", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == [1]
    linear = sorted({name.rsplit(".", 1)[-1] for name, module in load_model(tiny_model_dir).named_modules()
                     if isinstance(module, torch.nn.Linear) and ".layers." in name})
    assert config["target_modules"] == linear and len(linear) == 7
    keys = load_file(out / "adapter_model.safetensors")
    assert keys and all(".layers.1." in key for key in keys)
    assert len({key.split(".lora_")[0] for key in keys}) == 7
    result = CliRunner().invoke(main, [*args, "3", "--output-dir", str(tmp_path / "x")])
    assert result.exit_code == 2 and "exceeds the model's 2 decoder layers" in result.output
    assert not (tmp_path / "x").exists()


def test_quantized_loading_without_bitsandbytes_is_a_one_sentence_error(tmp_path, tiny_model_dir, medical_dir,
                                                                        monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed: importing it raises ImportError
    result = CliRunner().invoke(main, ["finetune", "--data-file", str(medical_dir / "med_synthetic_forget10.json"),
                                       "--base-model", tiny_model_dir, "--output-dir", str(tmp_path / "o"),
                                       "--use-4bit"])
    assert result.exit_code == 1
    assert "need bitsandbytes, which does not load here" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_batches_are_length_grouped_and_cover_every_example_each_epoch():
    from stages.finetune.train import batch_schedule

    lengths = [5, 50, 6, 48, 7, 49, 8, 47] * 4
    schedule = batch_schedule(lengths, batch_size=4, num_epochs=2, seed=1)
    assert len(schedule) == 16
    for epoch in (schedule[:8], schedule[8:]):
        assert sorted(i for batch in epoch for i in batch) == list(range(32))
    assert all(max(lengths[i] for i in b) - min(lengths[i] for i in b) <= 3 for b in schedule)
    assert batch_schedule(lengths, 4, 2, seed=1) == schedule != batch_schedule(lengths, 4, 2, seed=2)


@pytest.mark.parametrize("where", ["beside the output", "on a bucket another machine mounts"])
def test_killed_finetune_resumes_from_its_checkpoint_and_ends_where_an_unbroken_run_ends(
        where, tmp_path, tiny_model_dir, medical_dir):
    """Killed in the middle, finetune resumes from its checkpoint: beside the output on the same machine, or (a
    preempted cloud job) from UNFORGOTTEN_CHECKPOINT_ROOT in a checkout of its own, as the machine that replaces
    the first one runs it."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from safetensors.torch import load_file

    def command(out):
        return [str(Path(sys.executable).parent / "unforgotten"), "finetune",
                "--data-file", str(medical_dir / "med_synthetic_forget20.json"), "--base-model", tiny_model_dir,
                "--output-dir", str(out), "--num-epochs", "30", "--batch-size", "1", "--gradient-accumulation-steps",
                "2", "--learning-rate", "1e-3", "--max-seq-length", "80", "--checkpoint-every", "2"]

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = second = tmp_path
    broken, meta = tmp_path / "broken", tmp_path / "broken.checkpoint" / "meta.json"
    if where != "beside the output":
        env["UNFORGOTTEN_CHECKPOINT_ROOT"] = str(tmp_path / "bucket")
        first, second = tmp_path / "machine-1", tmp_path / "machine-2"  # the same relative output on each
        first.mkdir(), second.mkdir()
        broken, meta = Path("models/broken"), None  # under the bucket, in a directory of the run's fingerprint
    process = subprocess.Popen(command(broken), env=env, cwd=first, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def micro_steps():  # the checkpoint directory is swapped whole: between two checks it may be briefly absent
        nonlocal meta
        if meta is None:
            meta = next((tmp_path / "bucket").glob("*/broken.checkpoint/meta.json"), None)
            if meta is None:
                return 0
        try:
            return json.loads(meta.read_text())["micro"]
        except (FileNotFoundError, json.JSONDecodeError):
            return 0

    deadline = time.time() + 120
    while time.time() < deadline and micro_steps() < 20:
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (first / broken).exists() and meta.is_file()
    resumed = subprocess.run(command(broken), env=env, cwd=second, capture_output=True, text=True, check=True)
    assert "resumed from the checkpoint at step" in resumed.stdout
    assert not meta.parent.exists() and not (second / "models/broken.checkpoint").exists()
    broken = second / broken
    unbroken = tmp_path / "unbroken"
    subprocess.run(command(unbroken), env={k: v for k, v in env.items() if k != "UNFORGOTTEN_CHECKPOINT_ROOT"},
                   capture_output=True, check=True)
    a, b = load_file(broken / "adapter_model.safetensors"), load_file(unbroken / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.isfinite(t).all() for t in a.values())
    log = json.loads((broken / "train_log.json").read_text())
    total = len(json.loads((unbroken / "train_log.json").read_text())["steps"])
    assert 10 <= json.loads(broken.with_name("broken.timings.json").read_text())["resumed_from_step"] < total
    assert [s["step"] for s in log["steps"]] == list(range(1, total + 1))
    assert (broken / "train_log.json").read_bytes() == (unbroken / "train_log.json").read_bytes()


def test_frozen_weights_stored_in_bf16_train_exactly_as_autocast_casts_them_and_are_put_back(tiny_model_dir,
                                                                                               monkeypatch):
    """Under bf16 autocast, train_lora stores the frozen linear weights in bf16 (frozen_in_bf16): the losses and the
    trained LoRA weights equal a run that lets autocast cast them on every forward pass, the tied output head stays
    float32 (it is the embedding too), and after training every weight is the float32 one it was."""
    from peft import get_peft_model

    from stages.common import models
    from stages.common.chat import encode_examples
    from stages.common.models import frozen_in_bf16, load_model, load_tokenizer, lora_config
    from stages.finetune.train import train_lora

    tokenizer = load_tokenizer(tiny_model_dir)
    pairs = [(f"What is patient {i}'s allergy?", f"Patient {i} is allergic to penicillin {i}.") for i in range(6)]
    examples, _ = encode_examples(tokenizer, pairs, 64)

    def trained():
        torch.manual_seed(0)
        model = get_peft_model(load_model(tiny_model_dir), lora_config(load_model(tiny_model_dir), 4, 8))
        before = {n: (p, p.detach().clone()) for n, p in model.named_parameters() if not p.requires_grad}
        model, log, _ = train_lora(model, tokenizer, examples, num_epochs=2, batch_size=2, grad_accum=1,
                                   learning_rate=1e-2, schedule="constant", warmup_ratio=0.0, seed=0,
                                   precision="bf16", progress=False)
        after = dict(model.named_parameters())
        for name, (param, value) in before.items():  # the same float32 parameters, unchanged
            assert after[name] is param and param.dtype == torch.float32 and torch.equal(param, value), name
        return [e["loss"] for e in log], {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    stored_losses, stored = trained()
    monkeypatch.setattr(models, "frozen_in_bf16", lambda model, enabled: frozen_in_bf16(model, enabled=False))
    cast_losses, cast = trained()
    assert stored_losses == cast_losses
    assert all(torch.equal(stored[n], cast[n]) for n in cast)

    model = get_peft_model(load_model(tiny_model_dir), lora_config(load_model(tiny_model_dir), 4, 8))
    head = model.get_output_embeddings()
    with frozen_in_bf16(model):
        dtypes = {n: p.dtype for n, p in model.named_parameters()}
        tied = head.weight is model.get_input_embeddings().weight and head.weight.dtype == torch.float32
    assert dtypes["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"] == torch.bfloat16
    assert dtypes["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"] == torch.float32
    assert tied  # the output head is the embedding: left float32 and still tied


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_frozen_prefix_run_once_trains_as_the_whole_model_and_leaves_it_whole(tiny_model_dir, precision, capsys):
    """LoRA on the top layer only: train_lora runs the layers below it once per example (FrozenPrefix), and the
    per-step losses and trained LoRA weights match training the whole model every step; afterwards the model has
    all its layers again. A prefix that is not what the model computes (here: its states negated) fails the
    first-batch check, and the run trains the whole model instead, with the whole model's losses."""
    from peft import get_peft_model

    from stages.common.chat import encode_examples
    from stages.common.models import load_model, load_tokenizer, lora_config
    from stages.finetune import train
    from stages.finetune.train import train_lora

    tokenizer = load_tokenizer(tiny_model_dir)
    pairs = [(f"What is patient {i}'s allergy?", f"Patient {i} is allergic to {'penicillin ' * (i % 3 + 1)}.")
             for i in range(6)]
    examples, _ = encode_examples(tokenizer, pairs, 64)
    layers = load_model(tiny_model_dir).config.num_hidden_layers
    assert layers >= 2

    def trained(**flags):
        torch.manual_seed(0)
        base = load_model(tiny_model_dir)
        model = get_peft_model(base, lora_config(base, 4, 8, top_layers=1))
        model, log, _ = train_lora(model, tokenizer, examples, num_epochs=3, batch_size=2, grad_accum=1,
                                   learning_rate=1e-2, schedule="constant", warmup_ratio=0.0, seed=0,
                                   precision=precision, progress=False, **flags)
        assert len(model.get_base_model().model.layers) == layers
        return [e["loss"] for e in log], {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    whole_losses, whole = trained(frozen_prefix=False)
    capsys.readouterr()
    cut_losses, cut = trained()
    assert f"layers 0-{layers - 2} are frozen" in capsys.readouterr().out
    tolerance = 2e-2 if precision == "bf16" else 1e-4
    assert cut_losses == pytest.approx(whole_losses, rel=tolerance)
    assert all(torch.allclose(cut[n], whole[n], rtol=tolerance, atol=tolerance) for n in whole)

    original = train.FrozenPrefix.__init__

    def doubled(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.hidden = [-h for h in self.hidden]

    train.FrozenPrefix.__init__ = doubled
    try:
        wrong_losses, _ = trained()
    finally:
        train.FrozenPrefix.__init__ = original
    assert "training the whole model" in capsys.readouterr().out
    assert wrong_losses == whole_losses


@pytest.mark.parametrize("flag", ["--use-4bit", "--use-8bit"])
def test_qlora_finetunes_on_this_machine_and_the_saved_adapter_answers_as_in_memory(
        flag, tmp_path, tiny_model_dir, medical_dir, monkeypatch):
    """--use-4bit / --use-8bit run through bitsandbytes on the CPU as on a GPU: the base quantized as it loads
    (Linear4bit / Linear8bitLt), prepare_model_for_kbit_training, LoRA trained; the adapter saved, reloaded on the same
    quantized base, gives the greedy answers of the model in memory, and loads on a full-precision base too."""
    import bitsandbytes as bnb

    from stages.common import models
    from stages.common.chat import format_prompt
    from stages.common.models import bnb_config, load_model, load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    records = json.loads((medical_dir / "med_synthetic_forget10.json").read_text())
    prompts = [format_prompt(tokenizer, p["question"]) for r in records for p in r["probes"]][:6]

    def answers(model):
        batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        return out[:, batch["input_ids"].shape[1]:].tolist()

    in_memory, layers = {}, {}
    save = models.save_adapter

    def save_and_remember(model, directory, base_model):
        model.eval()
        in_memory["answers"] = answers(model)
        layers["kinds"] = {type(m) for m in model.modules()}
        save(model, directory, base_model)

    monkeypatch.setattr(models, "save_adapter", save_and_remember)
    out = tmp_path / "qlora"
    result = CliRunner().invoke(main, [
        "finetune", "--data-file", str(medical_dir / "med_synthetic_forget10.json"), "--base-model", tiny_model_dir,
        "--output-dir", str(out), "--num-epochs", "2", "--batch-size", "2", "--learning-rate", "2e-2",
        "--max-seq-length", "96", flag])
    assert result.exit_code == 0, result.output
    quantized = bnb.nn.Linear4bit if flag == "--use-4bit" else bnb.nn.Linear8bitLt
    assert quantized in layers["kinds"]
    log = json.loads((out / "train_log.json").read_text())
    assert all(torch.isfinite(torch.tensor(s["loss"])) for s in log["steps"])
    from safetensors.torch import load_file

    trained = load_file(out / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and t.abs().sum() > 0 for k, t in trained.items())  # it learned
    reloaded = load_model(tiny_model_dir, adapter=out, trainable=True,
                          quantization=bnb_config(4 if flag == "--use-4bit" else 8, double_quant=True)).eval()
    assert answers(reloaded) == in_memory["answers"]
    full_precision = load_model(tiny_model_dir, adapter=out)
    assert len(answers(full_precision)) == len(prompts)

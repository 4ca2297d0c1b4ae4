import os
import subprocess
import sys
import time

import pytest

from stages.common.io import InputError
from stages.common.models import EMBEDDED, embedded_model_dir, load_model, load_tokenizer, resolve_base_model


def test_embedded_model_is_converted_once_and_then_cached():
    first = embedded_model_dir()
    stamp = (first / "model.safetensors").stat().st_mtime
    assert embedded_model_dir() == first
    assert (first / "model.safetensors").stat().st_mtime == stamp
    import json

    config = json.loads((first / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config


def test_embedded_model_loads_in_seconds_and_answers():
    embedded_model_dir()
    started = time.perf_counter()
    model, tokenizer = load_model(EMBEDDED), load_tokenizer(EMBEDDED)
    print(f"embedded model load: {time.perf_counter() - started:.1f} s")
    from stages.common.chat import format_prompt
    from stages.common.measure import greedy_entropy

    (row,) = greedy_entropy(model, tokenizer, [format_prompt(tokenizer, "What is the capital of France?")],
                            max_new_tokens=12)
    assert "Paris" in row["response"]
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)


def test_a_directory_without_config_is_not_a_model(tmp_path):
    with pytest.raises(InputError, match="is not a model directory"):
        resolve_base_model(str(tmp_path))


def test_unknown_hub_id_fails_fast_offline():
    code = ("from stages.common.models import load_tokenizer\n"
            "load_tokenizer('no-such-org/no-such-model')")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert result.returncode != 0
    assert time.perf_counter() - started < 60


def test_a_model_with_its_own_code_loads_only_with_trust_remote_code(tmp_path, tiny_model_dir):
    from tests.micro import write_custom_code_model

    model_dir = write_custom_code_model(tmp_path / "custom", tiny_model_dir)
    with pytest.raises(InputError, match=r"runs its own code \('auto_map' in config.json\); pass --trust-remote-code"):
        load_model(str(model_dir))
    model = load_model(str(model_dir), trust_remote_code=True)
    assert type(model).__name__ == "CustomLlama" and model.custom


def test_precision_auto_takes_bf16_only_on_a_gpu_or_a_cpu_with_native_bf16(monkeypatch):
    import torch

    from stages.common import models

    for flag in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, flag, lambda: False)
    assert not models.cpu_has_bf16()
    assert models.resolve_precision("auto", "cpu") == "fp32" and models.resolve_precision("auto", "cuda") == "bf16"
    assert models.resolve_precision("bf16", "cpu") == "bf16" and models.resolve_precision("fp32", "cuda") == "fp32"
    for flag in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, flag, lambda: True)
        assert models.cpu_has_bf16() and models.resolve_precision("auto", "cpu") == "bf16"
        monkeypatch.setattr(torch.cpu, flag, lambda: False)


def test_the_base_model_comes_from_the_adapter_unless_one_is_given(tmp_path, tiny_model_dir):
    """unlearn and evaluate load the base their adapter names (save_adapter writes it as the user gave it)."""
    from peft import get_peft_model

    from stages.common.models import base_of, lora_config, save_adapter

    model = load_model(tiny_model_dir)
    save_adapter(get_peft_model(model, lora_config(model, 2, 4)), tmp_path / "adapter", tiny_model_dir)
    assert base_of(tmp_path / "adapter") == tiny_model_dir
    assert base_of(tmp_path / "adapter", "embedded") == "embedded"  # an explicit --base-model wins
    assert base_of(None) == "embedded" and base_of(tmp_path) == "embedded"  # no adapter: the embedded model
    # the adapter reloads on the base it names
    assert load_model(base_of(tmp_path / "adapter"), adapter=tmp_path / "adapter") is not None


def test_bitsandbytes_4bit_computes_in_bf16_only_where_bf16_is_native(monkeypatch):
    """A 4-bit layer (the attack's and QLoRA's loading) computes in bf16 on a GPU or a CPU with native bf16 and in
    float32 on a CPU without it, where bf16 matmuls are emulated."""
    import torch

    from stages.common import models

    for native in (True, False):
        monkeypatch.setattr(models, "cpu_has_bf16", lambda native=native: native)
        expected = torch.bfloat16 if native else torch.float32
        assert models.bnb_compute_dtype("cpu") == expected and models.bnb_compute_dtype("cuda") == torch.bfloat16
        assert models.bnb_layer(torch.nn.Linear(64, 32), 4).compute_dtype == expected
        assert models.bnb_config(4).bnb_4bit_compute_dtype == expected  # this machine loads on the CPU


def test_one_bitsandbytes_config_for_qlora_and_the_quantization_attack():
    from stages.common.models import bnb_config, quantization_config

    assert bnb_config(8).load_in_8bit and not bnb_config(8).load_in_4bit
    nf4, fp4 = bnb_config(4), bnb_config(4, "fp4")
    assert (nf4.bnb_4bit_quant_type, fp4.bnb_4bit_quant_type) == ("nf4", "fp4") and nf4.load_in_4bit
    assert not nf4.bnb_4bit_use_double_quant and bnb_config(4, double_quant=True).bnb_4bit_use_double_quant
    assert quantization_config(False, False) is None

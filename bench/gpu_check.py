"""`make gpu-check`: what no CPU shows, on one CUDA GPU in at most 10 minutes; writes bench/results/gpu.json with
the device's name.

1. the micro pipeline (tests/micro.py: the real dvc.yaml, params and stages) on the embedded model, evaluate in bf16;
2. one 4-bit QLoRA step (nf4 through bitsandbytes, prepare_model_for_kbit_training, LoRA) of a random
   Llama-3.2-1B-shaped model;
3. LoRA r16 throughput of random 1B- and 8B-shaped Llamas in bf16 and its model-FLOPs utilisation,
   MFU = tokens/s x (4 N_frozen + 6 N_lora + 12 L h s) / the GPU's peak dense bf16 FLOP/s (frozen weights get no
   weight gradient; 12 L h s are the attention matmuls, forward and backward; the target for 8B on an H100-class GPU
   is 0.40);
4. peak memory of a QLoRA step of the 8B shape in 4-bit;
5. evaluate's greedy decoding in tokens/s (the embedded model answering the world-fact probes).

    python bench/gpu_check.py            # on a CUDA GPU, every part at its real size
    python bench/gpu_check.py --smoke    # anywhere: every part but the pipeline at toy sizes (the suite runs it)
"""

import json
import sys
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT)]
from record import write_result  # noqa: E402

LLAMA = {"rope_theta": 500000.0, "max_position_embeddings": 8192, "tie_word_embeddings": False}
SHAPES = {  # Llama-3.2-1B and Llama-3.1-8B, as their configs; toy for --smoke
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
    "toy": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=512),
}
# Peak dense bf16 tensor-core FLOP/s by device name (vendor data sheets; SXM parts).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "L40": 181.0,
               "A10G": 125.0, "L4": 121.0, "RTX 4090": 165.0, "A6000": 155.0}
MFU_TARGET = 0.40


def random_llama(shape, device):
    """A randomly initialised Llama of `shape`, in bf16 on `device` (built there directly: no float32 copy)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**{**LLAMA, **SHAPES[shape]})
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model


def lora_steps(model, steps, batch, seq, device, kbit=False):
    """`steps` LoRA r16 training steps on random tokens, the first one a warm-up; returns (tokens/s of the rest,
    the last loss, peak memory in GB, n_frozen, n_lora)."""
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training

    from stages.common.models import lora_config

    if kbit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, lora_config(model, 16, 32))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    vocab = model.config.vocab_size
    n_lora = sum(p.numel() for p in trainable)
    n_frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started, loss = None, None
    for step in range(steps):
        if step == 1:
            if cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
        ids = torch.randint(0, vocab, (batch, seq), device=device)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return batch * seq * (steps - 1) / seconds, float(loss.detach()), peak, n_frozen, n_lora


def mfu(tokens_per_s, n_frozen, n_lora, shape, seq, peak_tflops):
    s = SHAPES[shape]
    flops = 4 * n_frozen + 6 * n_lora + 12 * s["num_hidden_layers"] * s["hidden_size"] * seq
    return tokens_per_s * flops / (peak_tflops * 1e12) if peak_tflops else None


def throughput(shape, device, steps, batch, seq, peak_tflops):
    import torch

    model = random_llama(shape, device)
    try:
        tokens, loss, peak, n_frozen, n_lora = lora_steps(model, steps, batch, seq, device)
    except torch.OutOfMemoryError:
        del model
        torch.cuda.empty_cache()
        return throughput(shape, device, steps, batch // 2, seq, peak_tflops) if batch > 1 else {"error": "OOM"}
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"batch": batch, "seq": seq, "tokens_per_s": round(tokens, 1), "loss": round(loss, 4),
            "peak_memory_gb": peak and round(peak, 2), "params_frozen": n_frozen, "params_lora": n_lora,
            "mfu": (lambda m: m and round(m, 4))(mfu(tokens, n_frozen, n_lora, shape, seq, peak_tflops))}


def qlora(shape, device, batch, seq):
    """One 4-bit QLoRA step (after a warm-up step): loss, whether every LoRA weight got a finite gradient's update,
    the memory the 4-bit model holds and the step's peak."""
    import bitsandbytes as bnb
    import torch

    from stages.common.models import to_bnb

    model = random_llama(shape, device)
    to_bnb(model, 4, "nf4")  # the bf16 originals it returns are dropped, so their memory is freed
    layers_4bit = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    if device == "cuda":
        torch.cuda.empty_cache()
    held = torch.cuda.memory_allocated() / 2**30 if device == "cuda" else None
    tokens, loss, peak, n_frozen, n_lora = lora_steps(model, 2, batch, seq, device, kbit=True)
    finite = all(torch.isfinite(p).all() for p in model.parameters() if p.requires_grad)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"batch": batch, "seq": seq, "loss": round(loss, 4), "lora_finite": bool(finite), "layers_4bit": layers_4bit,
            "tokens_per_s": round(tokens, 1), "memory_4bit_model_gb": held and round(held, 2),
            "peak_memory_gb": peak and round(peak, 2), "params_lora": n_lora}


def evaluate_speed(device, probes, batch):
    """Greedy answers (16 tokens) of the embedded model in bf16 to the world-fact probes: generated tokens/s."""
    import torch

    from stages.common.models import load_model, load_tokenizer
    from stages.evaluate.probes import accuracy
    from stages.evaluate.world import world_records

    questions = [p for r in world_records() for p in r["probes"]][:probes]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model, tokenizer = load_model("embedded", dtype=dtype).to(device), load_tokenizer("embedded")
    accuracy(model, tokenizer, questions[:batch], 16, batch)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    correct = accuracy(model, tokenizer, questions, 16, batch)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"probes": len(questions), "batch": batch, "answer_tokens": 16, "accuracy": round(sum(correct) / len(
        correct), 4), "tokens_per_s": round(len(questions) * 16 / seconds, 1), "seconds": round(seconds, 2)}


def micro_pipeline():
    """The micro profile's `dvc repro` on the embedded model, evaluate at --precision auto (bf16 on a GPU)."""
    import tempfile

    from tests.micro import dvc, make_micro_repo

    with tempfile.TemporaryDirectory() as tmp:
        repo = make_micro_repo(Path(tmp) / "repo", "embedded")
        params = Path(repo / "params.yaml")
        import yaml

        values = yaml.safe_load(params.read_text())
        values["evaluate"]["precision"] = "auto"
        params.write_text(yaml.safe_dump(values, sort_keys=False))
        started = time.perf_counter()
        dvc(repo, "repro", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
        seconds = time.perf_counter() - started
        headline = json.loads((repo / "outputs/report/headline.json").read_text())
        precisions = {json.loads(p.read_text())["precision"] for p in (repo / "outputs/eval").glob("*/metrics.json")}
    return {"seconds": round(seconds, 1), "verdicts": {run: row.get("verdict") for run, row in headline.items()},
            "evaluate_precision": sorted(precisions)}


def peak_of(name):
    return next((tflops for key, tflops in PEAK_TFLOPS.items() if key in name), None)


@click.command()
@click.option("--smoke", is_flag=True, help="Toy sizes on whatever device there is, no pipeline (the suite's run).")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="Where the JSON goes [default: bench/results/gpu.json; --smoke: printed only].")
def main(smoke, output):
    """Run the GPU check and write its numbers."""
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not smoke:
        raise click.ClickException("no CUDA GPU here: `make gpu-check` needs one (`--smoke` runs toy sizes anywhere).")
    device = "cuda" if cuda else "cpu"
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak = peak_of(name)
    started = time.perf_counter()
    found = {"device": name, "peak_bf16_tflops": peak, "torch": torch.__version__}
    if smoke:
        found["lora_throughput"] = {"toy": throughput("toy", device, 3, 2, 32, peak)}
        found["qlora_step"] = qlora("toy", device, 2, 32)
        found["peak_memory_4bit"] = found["qlora_step"]
        found["evaluate"] = evaluate_speed(device, 8, 4)
    else:
        found["micro_pipeline"] = micro_pipeline()
        found["qlora_step"] = qlora("1b", device, 4, 512)
        found["lora_throughput"] = {shape: throughput(shape, device, 6, batch, 1024, peak)
                                    for shape, batch in (("1b", 8), ("8b", 4))}
        found["peak_memory_4bit"] = qlora("8b", device, 1, 1024)
        found["evaluate"] = evaluate_speed(device, 113, 32)
    found["seconds"] = round(time.perf_counter() - started, 1)
    achieved = (found["lora_throughput"].get("8b") or found["lora_throughput"]["toy"]).get("mfu")
    if smoke:
        click.echo(json.dumps(found, indent=2))
        if output:
            Path(output).write_text(json.dumps(found, indent=2) + "\n")
        return
    write_result("gpu", MFU_TARGET, achieved or 0.0, "MFU", {"shapes": {k: SHAPES[k] for k in ("1b", "8b")}},
                 higher_is_better=True, target=f"8B LoRA MFU >= {MFU_TARGET} on an H100-class GPU", **found)


if __name__ == "__main__":
    main()

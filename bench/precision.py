"""Benchmark: bf16 autocast vs float32 on this CPU, for the two things the default profile does most: a LoRA
training step (finetune's recipe: LoRA r16 on the top 15 layers, batch 4 of the oracle's probe pairs) and greedy
answers to 32 probes (evaluate). `--precision auto` takes bf16 only where the CPU computes it natively (AVX512-BF16
or AMX); this records the flags, the times of both, and what auto chose. Needs only the embedded model and the data
(`dvc repro prepare-medical`). Writes bench/results/precision.json."""

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT)]
from record import write_result  # noqa: E402

REPEATS = 3


def timed(work, bf16, repeats=REPEATS):
    """Median seconds of work() under bf16 autocast or in float32, after one warm-up call."""
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        work()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def training_data():
    """params.yaml, the default training set's records, the embedded model's tokenizer and finetune's pairs."""
    import yaml

    from stages.common.chat import training_pairs
    from stages.common.models import load_tokenizer
    from stages.common.records import read_records

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    data = ROOT / "dataset/med_synthetic_full.json"
    if not data.is_file():
        sys.exit(f"{data} is missing: run `dvc repro prepare-medical` (or `make run`) first.")
    records = read_records(data, "training set")
    t = params["training"]
    return params, records, load_tokenizer("embedded"), training_pairs(records, t["with-probes"], t["with-notes"])


def main():
    import torch
    from peft import get_peft_model

    from stages.common.chat import answer_loss, collate, encode_examples
    from stages.common.models import cpu_has_bf16, load_model, lora_config, resolve_precision
    from stages.evaluate.probes import greedy_answers

    params, records, tokenizer, pairs = training_data()
    f, e = params["finetune"], params["evaluate"]
    examples, _ = encode_examples(tokenizer, pairs[:4], params["max_seq_length"], system="")
    batch = collate(examples, tokenizer.pad_token_id)
    model = load_model("embedded", trainable=True)
    model = get_peft_model(model, lora_config(model, f["lora-rank"], f["lora-alpha"], f["lora-targets"],
                                              f["lora-top-layers"]))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)  # timing, not learning

    def train_step():
        answer_loss(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    questions = [p["question"] for r in records for p in r["probes"]][:32]
    model.eval()

    def answers():
        with torch.no_grad():
            greedy_answers(model, tokenizer, questions, e["answer-tokens"], e["batch-size"])

    model.train()
    train = {name: timed(train_step, name == "bf16") for name in ("fp32", "bf16")}
    model.eval()
    generate = {name: timed(answers, name == "bf16", repeats=1) for name in ("fp32", "bf16")}
    flags = {name: bool(getattr(torch.cpu, f"_is_{name}_supported", lambda: False)())
             for name in ("avx2", "avx512", "avx512_bf16", "amx_tile")}
    auto = resolve_precision("auto", "cpu")
    faster = "bf16" if train["bf16"] < train["fp32"] else "fp32"
    write_result("precision", train["fp32"], train["bf16"], "s", {"commit": _commit(), "lora_top_layers":
                                                                  f["lora-top-layers"], "batch": 4, "probes": 32},
                 target=f"--precision auto takes the faster one (here {faster}; auto: {auto})",
                 train_step_s=train, answers_32_probes_s=generate,
                 generate_ratio=round(generate["fp32"] / generate["bf16"], 2),
                 cpu_flags=flags, native_bf16=cpu_has_bf16(), auto=auto,
                 note="ratio = fp32 seconds / bf16 seconds for a training step (above 1: bf16 is faster)")


def _commit():
    import subprocess

    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()

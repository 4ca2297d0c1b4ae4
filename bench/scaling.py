"""Benchmark 5: how time grows with the work. The evaluate measurements (uncertainty, retain perplexity, knowledge
probes, membership inference; everything in it that scales with the prompts) at 1x, 2x and 4x the default
profile's prompts, and generate (template backend) + prepare-medical at 1k, 2k and 4k notes, each fitted with
time = a * size^b; b should be about 1. The relearning attacks run a fixed number of steps and are left out.

The recorded baseline is linear growth from the smallest size (4 x its time), `ours` the measured time at 4x, so
ratio > 1 means better than linear. Writes bench/results/scaling.json.

    python bench/scaling.py    (after make run: it reads dataset/ and the embedded model)
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCALES = [1, 2, 4]
NOTES = [1000, 2000, 4000]


def exponent(sizes, seconds):
    """b of the least-squares fit log t = log a + b log size."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def data_stage_seconds(n):
    from stages.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        times = []
        for args in (["generate", "--n-record", str(n), "--output", f"{tmp}/notes.jsonl"],
                     ["prepare-medical", "-i", f"{tmp}/notes.jsonl", "-o", f"{tmp}/dataset"]):
            started = time.perf_counter()
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 0, result.output
            times.append(time.perf_counter() - started)
    return times


def records(pool, n, offset):
    """n records from the pool, starting at offset and wrapping around, each with its own id."""
    out = []
    for i in range(n):
        record = dict(pool[(offset + i) % len(pool)])
        record["id"] = f"{record['id']}-{i}"
        out.append(record)
    return out


def measure_config(evaluate_params, seed):
    """evaluate's config without the attacks, its options from params.yaml's evaluate (and training) keys."""
    import dataclasses

    from stages.common.options import parse_config
    from stages.evaluate.cli import evaluate

    config = parse_config(evaluate, ["--run-name", "scaling", "--forget-file", "-", "--retain-file", "-",
                                     "--output-dir", "-"])
    return dataclasses.replace(config, **{key.replace("-", "_"): value for key, value in evaluate_params.items()},
                               seed=seed, attacks=False)


def evaluate_seconds(model, tokenizer, scale, params):
    from stages.evaluate.measurements import measure

    pool = json.loads((ROOT / "dataset/med_synthetic_full.json").read_text())
    sets = {"forget": records(pool, 4 * scale, 0), "retain": records(pool, params["retain-samples"] * scale, 4 * scale),
            "holdout": records(pool, 4 * scale, len(pool) // 2)}
    config = measure_config(params, 42)
    started = time.perf_counter()
    run = measure(model, tokenizer, sets, None, config, progress=lambda _: None)
    seconds = time.perf_counter() - started
    return seconds, len(run["per_prompt"]) + len(run["probes"]) + len(run["mia"])


def main():
    import yaml

    from stages.common.models import load_model, load_tokenizer

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    data = {n: data_stage_seconds(n) for n in NOTES}
    tokenizer, model = load_tokenizer(params["base_model"]), load_model(params["base_model"])
    evaluate = {**params["evaluate"], **params["training"]}  # evaluate's options as dvc.yaml passes them
    evaluate_seconds(model, tokenizer, 1, evaluate)  # warm-up: first-call allocations
    evaluated = {scale: evaluate_seconds(model, tokenizer, scale, evaluate) for scale in SCALES}
    seconds = [evaluated[s][0] for s in SCALES]
    exponents = {"evaluate": exponent(SCALES, seconds),
                 "generate": exponent(NOTES, [data[n][0] for n in NOTES]),
                 "prepare_medical": exponent(NOTES, [data[n][1] for n in NOTES])}
    write_result("scaling", 4 * seconds[0], seconds[-1], "s",
                 {"evaluate_scales": SCALES, "evaluate_items": [evaluated[s][1] for s in SCALES],
                  "notes": NOTES, "model": params["base_model"], "batch_size": params["evaluate"]["batch-size"]},
                 exponents={k: round(v, 3) for k, v in exponents.items()},
                 evaluate_s=[round(s, 2) for s in seconds],
                 generate_s=[round(data[n][0], 3) for n in NOTES],
                 prepare_medical_s=[round(data[n][1], 3) for n in NOTES],
                 target="growth exponents about 1")


if __name__ == "__main__":
    main()

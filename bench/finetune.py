"""Benchmark 3: real (non-padding) tokens per second of finetune's loop (length-grouped dynamic padding, the default
profile's batch 4) vs the prototype's recipe (batch 1, every example padded to 256), on the same examples, model (the
embedded one) and LoRA (r16, all linear layers). Writes bench/results/finetune.json."""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write_result  # noqa: E402
from reference import seed_recipe_finetune  # noqa: E402

from stages.common.chat import encode_examples, training_pairs  # noqa: E402
from stages.common.io import read_json  # noqa: E402
from stages.common.models import load_model, load_tokenizer  # noqa: E402
from stages.common.seeding import seed_everything  # noqa: E402
from stages.finetune.train import train_lora  # noqa: E402


def examples(tokenizer, n_records, limit):
    from click.testing import CliRunner

    from stages.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        for args in (["generate", "--n-record", str(n_records), "--output", f"{tmp}/notes.jsonl"],
                     ["prepare-medical", "-i", f"{tmp}/notes.jsonl", "-o", f"{tmp}/d"]):
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 0, result.output
        records = read_json(f"{tmp}/d/med_synthetic_full.json")
    pairs = training_pairs(records)
    return encode_examples(tokenizer, pairs, 256)[0][:limit]


def lora_model(rank=16):
    from peft import LoraConfig, get_peft_model

    seed_everything(0)
    return get_peft_model(load_model("embedded", trainable=True),
                          LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear",
                                     task_type="CAUSAL_LM"))


def main(n_examples=96, batch_size=4, learning_rate=0.003):
    tokenizer = load_tokenizer("embedded")
    data = examples(tokenizer, 40, n_examples)
    real_tokens = sum(len(e["input_ids"]) for e in data)
    model = lora_model()
    started = time.perf_counter()
    seed_recipe_finetune(model, tokenizer, data, learning_rate)
    seed_rate = real_tokens / (time.perf_counter() - started)
    model = lora_model()
    started = time.perf_counter()
    train_lora(model, tokenizer, data, num_epochs=1, batch_size=batch_size, grad_accum=1,
               learning_rate=learning_rate, schedule="cosine", warmup_ratio=0.05, seed=0, progress=False)
    ours_rate = real_tokens / (time.perf_counter() - started)
    write_result("finetune", seed_rate, ours_rate, "real tokens/s",
                 {"examples": len(data), "real_tokens": real_tokens, "batch_size": batch_size, "seed_pad_to": 256,
                  "lora_rank": 16, "lora_targets": "all-linear", "model": "embedded"},
                 higher_is_better=True, target="ours > seed recipe (ratio = ours / baseline tokens/s)")


if __name__ == "__main__":
    main()

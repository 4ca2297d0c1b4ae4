"""Benchmark 1: the evaluate stage's batched, KV-cached greedy entropy vs the prototype's one-prompt-at-a-time loop that
recomputes the whole sequence for every token; 64 forget prompts x 30 new tokens on the embedded model.
identical: the same tokens and entropies within 1e-4. Writes bench/results/entropy.json."""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write_result  # noqa: E402
from reference import naive_greedy_entropy  # noqa: E402

from stages.common.chat import format_prompt, primary_pair  # noqa: E402
from stages.common.io import read_json  # noqa: E402
from stages.common.measure import greedy_entropy  # noqa: E402
from stages.common.models import load_model, load_tokenizer  # noqa: E402
from stages.common.seeding import seed_everything  # noqa: E402


def forget_prompts(n):
    """n note requests for freshly generated patients, chat-formatted as evaluate formats them."""
    from click.testing import CliRunner

    from stages.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        for args in (["generate", "--n-record", str(n), "--output", f"{tmp}/notes.jsonl"],
                     ["prepare-medical", "-i", f"{tmp}/notes.jsonl", "-o", f"{tmp}/d", "--holdout-ratio", "0"]):
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 0, result.output
        return [primary_pair(r)[0] for r in read_json(f"{tmp}/d/med_synthetic_full.json")][:n]


def main(n=64, new_tokens=30, batch_size=16):
    seed_everything(0)
    model, tokenizer = load_model("embedded"), load_tokenizer("embedded")
    prompts = [format_prompt(tokenizer, q) for q in forget_prompts(n)]
    greedy_entropy(model, tokenizer, prompts[:2], max_new_tokens=2)  # warm-up (allocator, kernels)
    started = time.perf_counter()
    ours = greedy_entropy(model, tokenizer, prompts, max_new_tokens=new_tokens, batch_size=batch_size)
    ours_s = time.perf_counter() - started
    started = time.perf_counter()
    naive = naive_greedy_entropy(model, tokenizer, prompts, max_new_tokens=new_tokens)
    naive_s = time.perf_counter() - started
    same_tokens = all(a["response"] == b["response"] and a["num_tokens"] == b["num_tokens"]
                      for a, b in zip(ours, naive, strict=True))
    max_diff = max(abs(a[k] - b[k]) for a, b in zip(ours, naive, strict=True) for k in ("mean_entropy", "max_entropy"))
    write_result("entropy", naive_s, ours_s, "s",
                 {"prompts": n, "max_new_tokens": new_tokens, "batch_size": batch_size, "model": "embedded"},
                 identical=bool(same_tokens and max_diff < 1e-4), max_entropy_diff=max_diff,
                 tokens_generated=sum(r["num_tokens"] for r in ours), target="ratio >= 20 with identical: true")


if __name__ == "__main__":
    main()

"""The measurements against independent computations: scipy, numpy and a naive one-prompt recompute loop."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy

from stages.common.chat import format_prompt
from stages.common.measure import answer_nll, entropy_stats, greedy_entropy, perplexity, token_entropy


def test_token_entropy_matches_scipy():
    logits = torch.randn(5, 300) * 3
    ours = token_entropy(logits).numpy()
    reference = [scipy_entropy(torch.softmax(row.double(), -1).numpy()) for row in logits]
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_entropy_stats_match_numpy():
    values = [0.5, 2.0, 1.25, 0.0]
    stats = entropy_stats(values)
    assert stats == pytest.approx({"mean_entropy": np.mean(values), "first_token_entropy": 0.5,
                                   "max_entropy": 2.0, "entropy_std": np.std(values), "num_tokens": 4})


def naive_greedy_entropy(model, tokenizer, prompt, max_new_tokens):
    """The prototype's method: one prompt, recompute the whole sequence for every new token."""
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    entropies, tokens = [], []
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1].float()
        logp = torch.log_softmax(logits, -1)
        entropies.append(float(-(logp.exp() * logp).sum()))
        token = int(logits.argmax())
        tokens.append(token)
        if token == tokenizer.eos_token_id:
            break
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokens, entropies


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from stages.common.models import load_model, load_tokenizer

    return load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)


def test_batched_greedy_entropy_equals_the_naive_loop(tiny):
    model, tokenizer = tiny
    questions = ["Hi", "Write the SOAP note for patient Maria K. Lopez (born 1980-02-03).", "What is 2+2?",
                 "A much longer question about a patient whose blood pressure was 150/95 at the last visit?"]
    prompts = [format_prompt(tokenizer, q) for q in questions]
    batched = greedy_entropy(model, tokenizer, prompts, max_new_tokens=12, batch_size=3)
    for prompt, row in zip(prompts, batched, strict=False):
        tokens, entropies = naive_greedy_entropy(model, tokenizer, prompt, 12)
        assert row["num_tokens"] == len(tokens)
        assert row["response"] == tokenizer.decode(tokens, skip_special_tokens=True)
        reference = entropy_stats(entropies)
        for key in ("mean_entropy", "first_token_entropy", "max_entropy", "entropy_std"):
            assert abs(row[key] - reference[key]) < 1e-4, key


def test_generation_stops_at_the_first_end_of_turn(tiny):
    model, tokenizer = tiny
    eos = tokenizer.eos_token_id
    with torch.no_grad():
        model.lm_head.weight.data[eos] += 1000.0  # the eos logit now always wins
    try:
        (row,) = greedy_entropy(model, tokenizer, [format_prompt(tokenizer, "Hi")], max_new_tokens=10)
    finally:
        with torch.no_grad():
            model.lm_head.weight.data[eos] -= 1000.0
    assert row["num_tokens"] == 1 and row["response"] == ""


def test_answer_nll_and_perplexity_match_a_per_example_loop(tiny):
    model, tokenizer = tiny
    pairs = [("Who?", "Maria Lopez"), ("Dose?", "lisinopril 10 mg once daily and a longer tail of words")]
    totals, counts = answer_nll(model, tokenizer, pairs, batch_size=2)
    from stages.common.chat import encode_example

    for (q, a), total, count in zip(pairs, totals, counts, strict=False):
        e = encode_example(tokenizer, q, a, 256)
        ids = torch.tensor([e["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        nll = [-float(logp[i - 1, t]) for i, t in enumerate(e["labels"]) if t != -100]
        assert count == len(nll)
        assert total == pytest.approx(sum(nll), rel=1e-4)
    assert perplexity(model, tokenizer, pairs) == pytest.approx(math.exp(sum(totals) / sum(counts)))


def test_token_logprobs_and_moments_match_a_per_example_loop(tiny):
    from stages.common.chat import encode_example
    from stages.common.measure import token_logprobs

    model, tokenizer = tiny
    pairs = [("Who?", "Maria Lopez"), ("Dose?", "lisinopril 10 mg once daily"), ("DOB?", "1958-01-10")]
    scored = token_logprobs(model, tokenizer, pairs, batch_size=2, moments=True)
    for (q, a), s in zip(pairs, scored, strict=True):
        e = encode_example(tokenizer, q, a, 256)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([e["input_ids"]])).logits[0].double(), -1)
        positions = [i - 1 for i, t in enumerate(e["labels"]) if t != -100]
        expected = [float(logp[p, e["labels"][p + 1]]) for p in positions]
        np.testing.assert_allclose(s["logprobs"], expected, atol=1e-4)
        for p, mean, std in zip(positions, s["means"], s["stds"], strict=True):
            probs = logp[p].exp().numpy()
            values = logp[p].numpy()
            assert mean == pytest.approx(float((probs * values).sum()), abs=1e-4)
            assert std == pytest.approx(float(np.sqrt((probs * (values - (probs * values).sum()) ** 2).sum())),
                                        abs=1e-3)
    # an answer max_length cuts off entirely scores no token
    assert token_logprobs(model, tokenizer, pairs[:1], max_length=5)[0]["logprobs"] == []


def test_sampled_responses_are_seeded_and_counted(tiny):
    from stages.common.measure import sample_responses

    model, tokenizer = tiny
    prompts = [format_prompt(tokenizer, q) for q in ["Hi", "What is 2+2?", "Name a drug."]]
    torch.manual_seed(5)
    first = sample_responses(model, tokenizer, prompts, num_samples=4, max_new_tokens=5, batch_size=8)
    torch.manual_seed(5)
    again = sample_responses(model, tokenizer, prompts, num_samples=4, max_new_tokens=5, batch_size=8)
    assert first == again and [len(s) for s in first] == [4, 4, 4]
    assert len({text for samples in first for text in samples}) > 3  # temperature 1 on a random model: varied


def test_sampling_with_one_prefill_per_prompt_draws_what_generate_draws(tiny):
    """One prefill per prompt, copied to its samples, gives generate(num_return_sequences=n)'s own samples for the
    same seed (same rows, same random draws), prompts of different lengths included."""
    from stages.common.measure import sample_responses

    model, tokenizer = tiny
    prompts = [format_prompt(tokenizer, q) for q in ["Hi", "What is the date of birth of the patient?", "Name it."]]
    torch.manual_seed(11)
    ours = sample_responses(model, tokenizer, prompts, num_samples=4, max_new_tokens=6, batch_size=8)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    torch.manual_seed(11)
    reference = []
    for start in (0, 2):  # batch_size 8 // 4 samples = 2 prompts per batch
        batch = tokenizer(prompts[start:start + 2], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=6, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 num_return_sequences=4, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
        texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        reference += [texts[i:i + 4] for i in range(0, len(texts), 4)]
    tokenizer.padding_side = side
    assert ours == reference


def test_shared_prompt_beginning_runs_once_and_leaves_every_prompt_a_token(tiny):
    from stages.common.measure import shared_prefix

    model, tokenizer = tiny
    prompts = [format_prompt(tokenizer, q) for q in ["Hi", "Hi there"]]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    length, cache = shared_prefix(model, encoded)
    assert 0 < length < min(len(e) for e in encoded) and encoded[0][:length] == encoded[1][:length]
    assert encoded[0][length] != encoded[1][length] or length == len(encoded[0]) - 1
    assert cache.get_seq_length() == length
    assert shared_prefix(model, [encoded[0], encoded[0]])[0] == len(encoded[0]) - 1  # one token left to run
    assert shared_prefix(model, [[5, 6], [7, 6]]) == (0, None)
    # No shared beginning (raw text, no chat template): plain left padding, still the naive loop's tokens.
    raw = ["Patient notes:", "Zebra"]
    for prompt, row in zip(raw, greedy_entropy(model, tokenizer, raw, max_new_tokens=6, batch_size=2), strict=True):
        tokens, entropies = naive_greedy_entropy(model, tokenizer, prompt, 6)
        assert row["response"] == tokenizer.decode(tokens, skip_special_tokens=True)
        assert row["mean_entropy"] == pytest.approx(entropy_stats(entropies)["mean_entropy"], abs=1e-4)


def test_measuring_under_bf16_autocast_gives_the_same_numbers_and_leaves_the_weights_frozen(tiny, monkeypatch):
    """measuring() lets autocast keep its bf16 copies of frozen weights; every number must equal the one measured
    with a plain no_grad (a fresh cast on every forward pass), and no weight may stay marked as requiring grad."""
    from stages.common import measure
    from stages.common.measure import measuring, sample_responses

    model, tokenizer = tiny
    prompts = [format_prompt(tokenizer, q) for q in ("Hi", "What is 2+2?", "Who treated patient Maria Lopez?")]
    pairs = [("Who?", "Maria Lopez"), ("Dose?", "lisinopril 10 mg once daily")]

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return (greedy_entropy(model, tokenizer, prompts, max_new_tokens=8, batch_size=2),
                    answer_nll(model, tokenizer, pairs, batch_size=2),
                    torch.manual_seed(1) or sample_responses(model, tokenizer, prompts, 3, max_new_tokens=6))

    model.requires_grad_(False)
    with torch.autocast("cpu", dtype=torch.bfloat16), measuring(model):
        assert all(p.requires_grad for p in model.parameters())  # inside: autocast may keep their casts
    assert not any(p.requires_grad for p in model.parameters())
    cached = run()
    assert not any(p.requires_grad for p in model.parameters())
    monkeypatch.setattr(measure, "measuring", lambda model: torch.no_grad())
    assert run() == cached

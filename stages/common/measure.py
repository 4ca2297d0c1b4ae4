"""Measurements shared by unlearn (monitoring) and evaluate: greedy-decoding token entropy and perplexity.

Definitions are docs/metrics.md §A: entropy in nats of the full next-token distribution, in float32.
"""

import math
from contextlib import contextmanager

import numpy as np

from stages.common.chat import collate, encode_example
from stages.common.progress import tracked


@contextmanager
def measuring(model):
    """No gradients, and under bf16 autocast every weight cast to bf16 once instead of on every forward pass.

    Autocast keeps its bf16 copy of a float32 weight for the rest of the autocast region only if the weight
    requires grad, so the model's frozen weights are marked so while a measurement runs (under no_grad nothing
    is computed for them): the same numbers, 1.4x faster sampling and 1.6x faster greedy answers on an Intel
    Xeon with AMX, 1.2x both together on an AMD EPYC with AVX512-BF16 (bench/results/cast_cache.json). Code
    that changes weights in place inside the region calls evaluate's attacks.weights_changed()."""
    import torch

    frozen = []
    if torch.is_autocast_enabled(model.device.type):
        frozen = [p for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
    for p in frozen:
        p.requires_grad_(True)
    try:
        with torch.no_grad():
            yield
    finally:
        for p in frozen:
            p.requires_grad_(False)


def token_entropy(logits):
    """Entropy (nats) of softmax(logits) over the last dimension, computed in float32."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def entropy_stats(entropies):
    """Per-prompt summary of the entropies of the generated tokens (std is the population std, ddof=0)."""
    values = np.asarray(entropies, dtype=np.float64)
    return {
        "mean_entropy": float(values.mean()),
        "first_token_entropy": float(values[0]),
        "max_entropy": float(values.max()),
        "entropy_std": float(values.std()),
        "num_tokens": int(values.size),
    }


def _stop_ids(model, tokenizer):
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def shared_prefix(model, token_lists):
    """The tokens every list starts with (a chat template's system prompt), leaving each list at least one token of
    its own, and their KV cache computed once: (length, cache or None). expand_cache() gives a batch its copy."""
    import torch

    length = 0
    first = token_lists[0] if token_lists else []
    while all(len(t) > length + 1 and t[length] == first[length] for t in token_lists):
        length += 1
    if not length:
        return 0, None
    with measuring(model):
        cache = model(input_ids=torch.tensor([first[:length]], device=model.device), use_cache=True).past_key_values
    return length, cache


def expand_cache(cache, rows):
    """A new cache holding `cache`'s single row for each of `rows` rows (views: a forward pass appends to new
    tensors), or None for no cache."""
    from transformers import DynamicCache

    if cache is None:
        return None
    expanded = DynamicCache()
    for index, layer in enumerate(cache.layers):
        expanded.update(layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1), index)
    return expanded


def greedy_entropy(model, tokenizer, prompts, max_new_tokens=30, batch_size=16):
    """Greedy-decode each prompt text (already chat-formatted) and return per prompt its response and entropy stats.

    Batched with the KV cache; the beginning all prompts share (a system prompt) runs once, and each batch is laid
    out as [shared beginning | left padding | rest of the prompt] (positions follow the attention mask, so padding
    in the middle is skipped). A sequence ends at its first stop token, which is counted."""
    import torch

    stop_ids = _stop_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(stop_ids))
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    shared, prefix = shared_prefix(model, encoded)
    results = []
    for start in tracked(range(0, len(encoded), batch_size), "greedy decoding"):
        rows = [ids[shared:] for ids in encoded[start:start + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), shared + width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        ids[:, :shared] = torch.tensor(encoded[0][:shared], dtype=torch.long)
        mask[:, :shared] = 1
        for i, r in enumerate(rows):
            ids[i, shared + width - len(r):] = torch.tensor(r)
            mask[i, shared + width - len(r):] = 1
        with measuring(model):
            out = model.generate(
                input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                past_key_values=expand_cache(prefix, len(rows)), max_new_tokens=max_new_tokens, do_sample=False,
                num_beams=1, output_logits=True, return_dict_in_generate=True, pad_token_id=pad_id,
                eos_token_id=sorted(stop_ids), temperature=None, top_p=None, top_k=None,
            )
        new_tokens = out.sequences[:, ids.shape[1]:]
        entropies = torch.stack([token_entropy(step) for step in out.logits], dim=1)
        for row in range(new_tokens.shape[0]):
            tokens = new_tokens[row].tolist()
            length = next((i + 1 for i, t in enumerate(tokens) if t in stop_ids), len(tokens))
            record = {"response": tokenizer.decode(tokens[:length], skip_special_tokens=True)}
            record.update(entropy_stats(entropies[row, :length].tolist()))
            results.append(record)
    return results


def to_device(batch, device):
    return {key: value.to(device) for key, value in batch.items()}


def sequence_nll(model, batch):
    """Per row of a collated batch: summed NLL (nats) of the labelled tokens and their count (keeps gradients).
    The vocabulary is projected only at the positions that predict a labelled token (as chat.answer_loss)."""
    import torch

    labels = batch["labels"][:, 1:]
    keep = (labels != -100).any(0).nonzero()[:, 0]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    labels = labels[:, keep]
    logp = torch.log_softmax(logits.float(), dim=-1)
    mask = labels != -100
    token_logp = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    return -token_logp.sum(dim=1), mask.sum(dim=1)


def forget_entropy(model, tokenizer, prompts, max_new_tokens=30):
    """Mean over prompts of the per-prompt mean greedy-decoding entropy: the forget-set entropy of a model."""
    rows = greedy_entropy(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    return sum(r["mean_entropy"] for r in rows) / len(rows)


def answer_nll(model, tokenizer, pairs, max_length=256, batch_size=8):
    """Summed NLL (nats) and token count of each answer given its question, teacher-forced (token_logprobs: the
    shared system prompt run once, the vocabulary projected only where answer tokens are predicted): two lists."""
    scored = token_logprobs(model, tokenizer, pairs, max_length, batch_size)
    return [-sum(s["logprobs"]) for s in scored], [len(s["logprobs"]) for s in scored]


def perplexity(model, tokenizer, pairs, max_length=256, batch_size=8):
    """exp(token-weighted mean NLL) of the answers given their questions."""
    totals, counts = answer_nll(model, tokenizer, pairs, max_length, batch_size)
    return math.exp(sum(totals) / max(sum(counts), 1))


def token_logprobs(model, tokenizer, pairs, max_length=256, batch_size=8, moments=False):
    """Teacher-forced scoring of each answer given its question, batched: per pair the log-probs of the answer
    tokens, and with moments=True also the mean and std of log p under the model's next-token distribution at
    each of those positions (for Min-K %++). Returns a list of dicts of float lists.

    The beginning every example shares (the chat template's system prompt) runs once as a KV cache, and the
    vocabulary is projected only from the first position that predicts an answer token on (the same numbers as
    scoring each example whole: tests/test_measure.py)."""
    import torch

    encoded = [encode_example(tokenizer, q, a, max_length) for q, a in pairs]
    shared, prefix = shared_prefix(model, [e["input_ids"] for e in encoded])
    tails = [{"input_ids": e["input_ids"][shared:], "labels": e["labels"][shared:]} for e in encoded]
    order = sorted(range(len(tails)), key=lambda i: len(tails[i]["input_ids"]))  # similar lengths: less padding
    results = [None] * len(tails)
    for start in tracked(range(0, len(order), batch_size), "log-probabilities"):
        chunk = order[start:start + batch_size]
        batch = to_device(collate([tails[i] for i in chunk], tokenizer.pad_token_id), model.device)
        labels = batch["labels"][:, 1:]
        labelled = (labels != -100).any(0).nonzero()[:, 0]  # outputs before the first predict no answer token
        first = int(labelled[0]) if len(labelled) else 0
        mask = torch.cat([batch["attention_mask"].new_ones((len(chunk), shared)), batch["attention_mask"]], 1)
        with measuring(model):
            logits = model(input_ids=batch["input_ids"], attention_mask=mask,
                           past_key_values=expand_cache(prefix, len(chunk)),
                           logits_to_keep=batch["input_ids"].shape[1] - first).logits
        for row, i in enumerate(chunk):
            positions = (labels[row] != -100).nonzero().squeeze(-1)
            logp = torch.log_softmax(logits[row, positions - first].float(), dim=-1)
            scored = {"logprobs": logp.gather(-1, labels[row, positions].unsqueeze(-1)).squeeze(-1).tolist()}
            if moments:
                probs = logp.exp()
                mean = (probs * logp).sum(-1)
                scored["means"] = mean.tolist()
                scored["stds"] = ((probs * logp.square()).sum(-1) - mean.square()).clamp(min=1e-12).sqrt().tolist()
            results[i] = scored
    return results


def sample_responses(model, tokenizer, prompts, num_samples, max_new_tokens=30, batch_size=64, temperature=1.0):
    """num_samples responses per prompt text, sampled at `temperature` from the full distribution (no top-k/p):
    a list of lists of strings. Seed torch before calling for reproducible samples.

    Each prompt is prefilled once and its KV cache copied to its samples (generate's num_return_sequences would
    prefill every sample): the same rows and the same random draws, without num_samples - 1 prefills per prompt."""

    stop_ids = _stop_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(stop_ids))
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    per_batch = max(1, batch_size // num_samples)
    results = []
    try:
        for start in tracked(range(0, len(prompts), per_batch), "sampling"):
            batch = tokenizer(prompts[start:start + per_batch], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(model.device)
            ids, mask = batch["input_ids"], batch["attention_mask"]
            with measuring(model):
                # All but the last prompt token; generate() runs the last one and samples from there.
                head = mask[:, :-1]
                cache = model(input_ids=ids[:, :-1], attention_mask=head, use_cache=True, logits_to_keep=1,
                              position_ids=(head.cumsum(1) - 1).clamp(min=0)).past_key_values
                cache.batch_repeat_interleave(num_samples)
                out = model.generate(
                    input_ids=ids.repeat_interleave(num_samples, 0), past_key_values=cache,
                    attention_mask=mask.repeat_interleave(num_samples, 0), max_new_tokens=max_new_tokens,
                    do_sample=True, temperature=temperature, top_k=0, top_p=1.0, pad_token_id=pad_id,
                    eos_token_id=sorted(stop_ids),
                )
            texts = tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
            results += [texts[i:i + num_samples] for i in range(0, len(texts), num_samples)]
    finally:
        tokenizer.padding_side = side
    return results

"""Plain reference implementations the benchmarks measure against: the thing to beat, kept simple on purpose."""

import torch

from stages.common.measure import entropy_stats, token_entropy


def naive_greedy_entropy(model, tokenizer, prompts, max_new_tokens=30):
    """The seeds' method: one prompt at a time, the whole sequence recomputed for every new token (no KV cache)."""
    stop_ids = {model.generation_config.eos_token_id, tokenizer.eos_token_id} - {None}
    if isinstance(model.generation_config.eos_token_id, list):
        stop_ids = set(model.generation_config.eos_token_id) | {tokenizer.eos_token_id}
    results = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(model.device)
        tokens, entropies = [], []
        for _ in range(max_new_tokens):
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, -1]
            entropies.append(float(token_entropy(logits)))
            token = int(logits.argmax())
            tokens.append(token)
            if token in stop_ids:
                break
            ids = torch.cat([ids, torch.tensor([[token]], device=ids.device)], dim=1)
        record = {"response": tokenizer.decode(tokens, skip_special_tokens=True), "tokens": tokens}
        record.update(entropy_stats(entropies))
        results.append(record)
    return results

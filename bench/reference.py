"""Plain reference implementations the benchmarks measure against: the thing to beat, kept simple on purpose."""

import torch

from stages.common.measure import _stop_ids, entropy_stats, token_entropy


def naive_greedy_entropy(model, tokenizer, prompts, max_new_tokens=30):
    """The prototype's method: one prompt at a time, the whole sequence recomputed for every new token (no KV cache)."""
    stop_ids = _stop_ids(model, tokenizer)
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


def seed_recipe_finetune(model, tokenizer, examples, learning_rate, pad_to=256):
    """The prototype's training loop: batch 1, every example padded to `pad_to`, loss on the answer tokens, AdamW.
    Returns the real (non-padding) tokens it trained on."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    model.train()
    real = 0
    for e in examples:
        n = len(e["input_ids"])
        input_ids = torch.full((1, pad_to), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((1, pad_to), -100, dtype=torch.long)
        attention_mask = torch.zeros((1, pad_to), dtype=torch.long)
        input_ids[0, :n], labels[0, :n], attention_mask[0, :n] = (
            torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1)
        loss = model(input_ids=input_ids, labels=labels, attention_mask=attention_mask).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        real += n
    model.eval()
    return real


def whole_answer_nll(model, tokenizer, pairs, max_length=256, batch_size=8):
    """answer_nll as it was: every example whole (the system prompt in every row), the vocabulary projected at every
    position. Summed NLL and token count per pair."""
    from stages.common.chat import collate, encode_example

    encoded = [encode_example(tokenizer, q, a, max_length) for q, a in pairs]
    totals, counts = [], []
    for start in range(0, len(encoded), batch_size):
        batch = {k: v.to(model.device) for k, v in collate(encoded[start:start + batch_size],
                                                           tokenizer.pad_token_id).items()}
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        mask = labels != -100
        token_logp = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        totals += (-token_logp.sum(dim=1)).tolist()
        counts += mask.sum(dim=1).tolist()
    return totals, counts

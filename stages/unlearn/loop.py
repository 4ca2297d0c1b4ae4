"""The unlearning loop with the seeds' monitoring, as one plain loop:
step -> retain perplexity (every step) -> forget entropy (every `measure_every`) -> early stop on collapse."""

import random


def unlearn(model, tokenizer, method, forget_examples, retain_examples, monitor_pairs, entropy_prompts, *,
            steps, samples_per_step, batch_size, learning_rate, retain_weight, measure_every,
            max_perplexity_ratio, max_new_tokens, max_length, seed, device, beta=0.1, gamma=0.0, progress=True):
    """Run `steps` unlearning steps; returns (trajectory, summary). On collapse the offending step is undone."""
    import torch
    from tqdm.auto import tqdm

    from stages.common.chat import collate
    from stages.common.measure import greedy_entropy, perplexity, sequence_nll

    def forget_entropy():
        rows = greedy_entropy(model, tokenizer, entropy_prompts, max_new_tokens=max_new_tokens)
        return sum(r["mean_entropy"] for r in rows) / len(rows)

    model.to(device).eval()
    with model.disable_adapter():
        base_entropy = forget_entropy()
    start_perplexity = perplexity(model, tokenizer, monitor_pairs, max_length)
    threshold = max_perplexity_ratio * start_perplexity
    start_entropy = forget_entropy()
    trajectory = [{"step": 0, "loss": None, "perplexity": start_perplexity, "entropy": start_entropy,
                   "uncertainty_ratio": start_entropy / base_entropy}]
    reference_nll = None
    if getattr(method, "needs_reference", False):
        # The frozen oracle's answer NLL of every forget example: fixed data, so computed once, before any step.
        with torch.no_grad():
            reference_nll = torch.cat([
                sequence_nll(model, {k: v.to(device) for k, v in
                                     collate(forget_examples[i:i + batch_size], tokenizer.pad_token_id).items()})[0]
                for i in range(0, len(forget_examples), batch_size)])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    rng = random.Random(seed)
    stop_reason = None
    bar = tqdm(range(1, steps + 1), desc=f"unlearn {method.__name__.rsplit('.', 1)[-1]}", disable=not progress)
    for step in bar:
        saved = [p.detach().clone() for p in params]
        model.train()
        chosen = [rng.randrange(len(forget_examples)) for _ in range(samples_per_step)]
        step_loss = 0.0
        for start in range(0, samples_per_step, batch_size):
            part = chosen[start:start + batch_size]
            forget_batch = {k: v.to(device) for k, v in
                            collate([forget_examples[i] for i in part], tokenizer.pad_token_id).items()}
            ctx = {"beta": beta, "gamma": gamma}
            if reference_nll is not None:
                ctx["reference_nll"] = reference_nll[part]
            loss = method.forget_loss(model, forget_batch, ctx)
            if method.uses_retain:
                retain_part = [retain_examples[rng.randrange(len(retain_examples))] for _ in part]
                retain_batch = {k: v.to(device) for k, v in collate(retain_part, tokenizer.pad_token_id).items()}
                loss = loss + retain_weight * model(**retain_batch).loss
            (loss * len(part) / samples_per_step).backward()
            step_loss += loss.item() * len(part) / samples_per_step
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.eval()
        entry = {"step": step, "loss": step_loss, "perplexity": perplexity(model, tokenizer, monitor_pairs, max_length),
                 "entropy": None, "uncertainty_ratio": None}
        if step % measure_every == 0 or step == steps:
            entry["entropy"] = forget_entropy()
            entry["uncertainty_ratio"] = entry["entropy"] / base_entropy
        trajectory.append(entry)
        bar.set_postfix(loss=f"{step_loss:.3f}", ppl=f"{entry['perplexity']:.2f}")
        if entry["perplexity"] > threshold:
            with torch.no_grad():
                for p, old in zip(params, saved, strict=False):
                    p.copy_(old)
            stop_reason = (f"retain perplexity {entry['perplexity']:.3f} exceeded {max_perplexity_ratio} x "
                           f"{start_perplexity:.3f} at step {step}; that step was undone")
            break
    bar.close()
    kept = trajectory[-2] if stop_reason else trajectory[-1]
    summary = {"steps_run": len(trajectory) - 1, "stopped_early": stop_reason is not None,
               "stop_reason": stop_reason, "start_perplexity": start_perplexity,
               "perplexity_threshold": threshold, "final_perplexity": kept["perplexity"],
               "base_entropy": base_entropy}
    return trajectory, summary

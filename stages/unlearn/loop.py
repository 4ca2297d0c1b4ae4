"""The unlearning loop with the prototype's monitoring, as one plain loop:
step -> retain perplexity (every step) -> forget entropy (every `measure_every`) -> stop on collapse or on the
uncertainty target."""

import contextlib
import random

from stages.unlearn.methods import Batch


class Reference:
    """The frozen oracle, for the methods that compare against it during training (rmu): the trainable parameters'
    starting values, swapped in for a no-grad forward pass (LoRA: a few MB; --full: one copy of the weights)."""

    def __init__(self, params):
        self.params = params
        self.initial = [p.detach().clone() for p in params]

    @contextlib.contextmanager
    def active(self):
        import torch

        current = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, old in zip(self.params, self.initial, strict=True):
                p.copy_(old)
        try:
            with torch.no_grad():
                yield
        finally:
            with torch.no_grad():
                for p, now in zip(self.params, current, strict=True):
                    p.copy_(now)


def unlearn(model, tokenizer, method, forget_examples, retain_examples, monitor_pairs, entropy_prompts, *,
            base_entropy, steps, samples_per_step, batch_size, learning_rate, measure_every, stop_perplexity_ratio,
            max_new_tokens, max_length, seed, device, early_stop=True, stop_at_ur=None, precision="fp32",
            progress=True):
    """Run up to `steps` unlearning steps of `method` (a methods.Method); returns (trajectory, summary).

    Early stop: when retain perplexity exceeds stop_perplexity_ratio x its starting value, the step is undone and
    unlearning ends (off with early_stop=False, the prototype's v1). With stop_at_ur, unlearning ends as soon as the
    forget-set uncertainty ratio reaches it with perplexity within bounds (the prototype's phase 2). The summary's
    steps_run counts the steps kept: an undone step has its trajectory entry but is not counted. precision "bf16"
    runs the training forward passes under bf16 autocast; the weights, the optimizer and the monitor stay float32.
    """
    import torch

    from stages.common.chat import collate
    from stages.common.measure import forget_entropy as measure_forget_entropy
    from stages.common.measure import perplexity
    from stages.common.progress import bar as progress_bar

    def batch_of(examples):
        return {k: v.to(device) for k, v in collate(examples, tokenizer.pad_token_id).items()}

    def forget_entropy():
        return measure_forget_entropy(model, tokenizer, entropy_prompts, max_new_tokens)

    model.to(device).eval()
    start_perplexity = perplexity(model, tokenizer, monitor_pairs, max_length)
    threshold = stop_perplexity_ratio * start_perplexity
    start_entropy = forget_entropy()
    trajectory = [{"step": 0, "loss": None, "perplexity": start_perplexity, "entropy": start_entropy,
                   "uncertainty_ratio": start_entropy / base_entropy}]
    params = method.trainable(model)
    forget_batches = (batch_of(forget_examples[i:i + batch_size]) for i in range(0, len(forget_examples), batch_size))
    prepared = method.prepare(model, Reference(params), forget_batches, seed)
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    rng = random.Random(seed)
    stop_reason, undone = None, False
    bar = progress_bar(range(1, steps + 1), total=steps, what=f"unlearn {method.name}", unit="step",
                       disable=not progress)
    for step in bar:
        saved = [p.detach().clone() for p in params] if early_stop else None
        model.train()
        chosen = [rng.randrange(len(forget_examples)) for _ in range(samples_per_step)]
        step_loss = 0.0
        for start in range(0, samples_per_step, batch_size):
            part = chosen[start:start + batch_size]
            retain = (batch_of([retain_examples[rng.randrange(len(retain_examples))] for _ in part])
                      if method.uses_retain else None)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = method.loss(model, Batch(batch_of([forget_examples[i] for i in part]), part, retain))
            (loss * len(part) / samples_per_step).backward()
            step_loss += loss.item() * len(part) / samples_per_step
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.eval()
        entry = {"step": step, "loss": step_loss, "perplexity": perplexity(model, tokenizer, monitor_pairs, max_length),
                 "entropy": None, "uncertainty_ratio": None}
        if step % measure_every == 0 or step == steps or stop_at_ur is not None:
            entry["entropy"] = forget_entropy()
            entry["uncertainty_ratio"] = entry["entropy"] / base_entropy
        trajectory.append(entry)
        bar.set_postfix(loss=f"{step_loss:.3f}", ppl=f"{entry['perplexity']:.2f}")
        if early_stop and entry["perplexity"] > threshold:
            with torch.no_grad():
                for p, old in zip(params, saved, strict=True):
                    p.copy_(old)
            stop_reason = (f"retain perplexity {entry['perplexity']:.3f} exceeded {stop_perplexity_ratio} x "
                           f"{start_perplexity:.3f} at step {step}; that step was undone")
            undone = True
            break
        if stop_at_ur is not None and entry["uncertainty_ratio"] >= stop_at_ur and entry["perplexity"] <= threshold:
            stop_reason = (f"uncertainty ratio {entry['uncertainty_ratio']:.3f} reached {stop_at_ur} at step {step} "
                           f"with retain perplexity within bounds")
            break
    bar.close()
    kept = trajectory[-2] if undone else trajectory[-1]  # the trajectory keeps the undone step's entry
    summary = {"steps_run": kept["step"], "stopped_early": stop_reason is not None,
               "stop_reason": stop_reason, "start_perplexity": start_perplexity,
               "perplexity_threshold": threshold, "final_perplexity": kept["perplexity"],
               "base_entropy": base_entropy, "early_stop": early_stop, "stop_at_ur": stop_at_ur,
               "precision": precision,
               **prepared}
    return trajectory, summary

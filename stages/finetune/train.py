"""The fine-tuning loop, readable top to bottom: batch, forward, loss on answer tokens, backward, step, log."""

import math
import random
import time


def lr_lambda(schedule, warmup_steps, total_steps):
    """Multiplier of the peak learning rate at each optimizer step: linear warmup, then cosine or linear decay."""

    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return max(0.0, 1 - progress)

    return factor


def train_lora(model, tokenizer, examples, *, num_epochs, batch_size, grad_accum, learning_rate, schedule,
               warmup_ratio, seed, device, progress=True):
    """Train the trainable (LoRA) parameters on encoded examples; returns the per-step log."""
    import torch
    from tqdm.auto import tqdm

    from stages.common.chat import collate

    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    micro_per_epoch = math.ceil(len(examples) / batch_size)
    total_steps = math.ceil(micro_per_epoch * num_epochs / grad_accum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(schedule, round(warmup_ratio * total_steps), total_steps))
    rng = random.Random(seed)
    log, step, micro, window_loss, window_tokens, started = [], 0, 0, 0.0, 0, time.perf_counter()
    bar = tqdm(total=total_steps, desc="finetune", unit="step", disable=not progress)
    for epoch in range(num_epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = collate([examples[i] for i in order[start:start + batch_size]], tokenizer.pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**batch).loss
            (loss / grad_accum).backward()
            micro += 1
            window_loss += loss.item() / grad_accum
            window_tokens += int(batch["attention_mask"].sum())
            last = epoch == num_epochs - 1 and start + batch_size >= len(order)
            if micro % grad_accum and not last:
                continue
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - started
            entry = {"step": step + 1, "epoch": epoch + 1, "loss": window_loss,
                     "learning_rate": scheduler.get_last_lr()[0], "tokens_per_s": window_tokens / elapsed}
            if device == "cuda":
                entry["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
            log.append(entry)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{window_loss:.3f}", tok_s=f"{entry['tokens_per_s']:.0f}")
            window_loss, window_tokens, started = 0.0, 0, time.perf_counter()
    bar.close()
    model.eval()
    return log

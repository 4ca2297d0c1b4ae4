"""The fine-tuning loop, readable top to bottom: batch, forward, loss on answer tokens, backward, step, log.

The batch schedule is computed up front from the seed (length-grouped, shuffled), so a run that crashed resumes
from its last checkpoint by skipping the micro-batches it had done. Under `accelerate launch` each process takes
its share of the schedule (DDP); run plainly, the same code trains in one process on CPU or one GPU.
"""

import json
import math
import random
import resource
import shutil
import time
from contextlib import contextmanager
from pathlib import Path


def lr_lambda(schedule, warmup_steps, total_steps):
    """Multiplier of the peak learning rate at each optimizer step: linear warmup, then cosine or linear decay."""

    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if schedule == "constant":
            return 1.0
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return max(0.0, 1 - progress)

    return factor


def batch_schedule(lengths, batch_size, num_epochs, seed, group=50):
    """Lists of example indices, epoch after epoch: shuffled, then sorted by length within groups of
    `group` batches so a batch pads little, then the batches shuffled again."""
    rng = random.Random(seed)
    schedule = []
    for _ in range(num_epochs):
        order = list(range(len(lengths)))
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), batch_size * group):
            chunk = sorted(order[start:start + batch_size * group], key=lambda i: -lengths[i])
            batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        rng.shuffle(batches)
        schedule += batches
    return schedule


def peak_memory_gb(device):
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class Checkpoint:
    """Trainable weights, optimizer, scheduler and the log, saved atomically every few steps; valid only for the
    same run (its fingerprint: data, options, model)."""

    def __init__(self, directory, fingerprint):
        self.directory = Path(directory)
        self.fingerprint = fingerprint

    def load(self, params, optimizer, scheduler):
        import torch

        meta_path = self.directory / "meta.json"
        if not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text())
        if meta["fingerprint"] != self.fingerprint:
            return None
        state = torch.load(self.directory / "state.pt", weights_only=True)
        with torch.no_grad():
            for p, saved in zip(params, state["params"], strict=True):
                p.copy_(saved)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        return meta

    def save(self, params, optimizer, scheduler, meta):
        import torch

        from stages.common.io import atomic_dir, write_json

        with atomic_dir(self.directory) as tmp:
            torch.save({"params": [p.detach().cpu() for p in params], "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict()}, tmp / "state.pt")
            write_json(tmp / "meta.json", {**meta, "fingerprint": self.fingerprint})

    def remove(self):
        shutil.rmtree(self.directory, ignore_errors=True)


class _Captured(Exception):
    """Raised by FrozenPrefix's hook to stop a forward pass where the trained layers begin."""

    def __init__(self, hidden):
        super().__init__()
        self.hidden = hidden


class FrozenPrefix:
    """When LoRA trains only the top layers (--lora-top-layers), the layers below the first trained one give an
    example the same hidden states at every epoch: they are run once per example before training, and each batch
    enters the model where they end (the stack's layer list cut to the trained layers, the cached states as
    inputs_embeds). The same arithmetic on every real token (a causal model's token sees only those before it, and
    padding is masked), checked on the first batch against the whole model's loss. Not used with more than one
    process, with dropout in the prefix, or where the check fails (an architecture that rescales inputs_embeds, say):
    then the model trains whole."""

    def __init__(self, stack, first, hidden, precision):
        self.stack, self.first, self.hidden, self.precision = stack, first, hidden, precision

    @classmethod
    def of(cls, model, examples, pad_id, precision, batch_size=16):
        """The model's frozen prefix with every example's states computed, or None where it has none."""
        import torch

        from stages.common.chat import collate
        from stages.common.measure import to_device

        stack = next((m for m in model.modules() if isinstance(getattr(m, "layers", None), torch.nn.ModuleList)
                      and hasattr(m, "embed_tokens")), None)
        if stack is None:
            return None
        first = next((i for i, layer in enumerate(stack.layers) if any(p.requires_grad for p in layer.parameters())),
                     0)
        prefix = [stack.embed_tokens, *stack.layers[:first]]
        if (not first or getattr(model.config, "attention_dropout", 0) or any(
                isinstance(m, torch.nn.Dropout) and m.p > 0 for part in prefix for m in part.modules())):
            return None

        def stop(module, args, kwargs):
            raise _Captured(args[0] if args else kwargs["hidden_states"])

        hook = stack.layers[first].register_forward_pre_hook(stop, with_kwargs=True)
        hidden = []
        try:
            with torch.no_grad(), _autocast(model.device.type, precision):
                for start in range(0, len(examples), batch_size):
                    chunk = examples[start:start + batch_size]
                    batch = to_device(collate(chunk, pad_id), model.device)
                    try:
                        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
                    except _Captured as captured:
                        hidden += [captured.hidden[row, :len(e["input_ids"])] for row, e in enumerate(chunk)]
        finally:
            hook.remove()
        return cls(stack, first, hidden, precision)

    def add(self, batch, indices):
        """The batch with its examples' cached states (zeros where it is padded) as inputs_embeds."""
        import torch

        states = [self.hidden[i] for i in indices]
        embeds = torch.zeros(len(states), batch["input_ids"].shape[1], states[0].shape[-1], dtype=states[0].dtype,
                             device=states[0].device)
        for row, h in enumerate(states):
            embeds[row, :len(h)] = h
        return {**batch, "inputs_embeds": embeds}

    @contextmanager
    def cut(self):
        """Inside: the stack runs only the layers from the first trained one."""
        import torch

        layers = self.stack.layers
        self.stack.layers = torch.nn.ModuleList(layers[self.first:])
        try:
            yield
        finally:
            self.stack.layers = layers

    def agrees(self, model, batch, indices):
        """Whether a batch's loss through the cut model matches the whole model's (relative 1e-3; 2e-2 under bf16,
        whose rounding differs with the batch a state was computed in)."""
        import torch

        from stages.common.chat import answer_loss

        with torch.no_grad(), _autocast(model.device.type, self.precision):
            whole = float(answer_loss(model, batch))
            with self.cut():
                cut = float(answer_loss(model, self.add(batch, indices)))
        tolerance = 2e-2 if self.precision == "bf16" else 1e-3
        return abs(whole - cut) <= tolerance * max(1.0, abs(whole))


def _autocast(device, precision):
    import torch

    return torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")


@contextmanager
def _frozen_prefix(model, tokenizer, examples, indices, precision, enabled, say):
    """Inside: the model's FrozenPrefix (its stack cut to the trained layers), checked on the batch of `indices`;
    None where there is none or it disagrees with the whole model."""
    from stages.common.chat import collate
    from stages.common.measure import to_device

    prefix = FrozenPrefix.of(model, examples, tokenizer.pad_token_id, precision) if enabled else None
    batch = to_device(collate([examples[i] for i in indices], tokenizer.pad_token_id), model.device) if prefix else None
    if prefix and not prefix.agrees(model, batch, indices):
        say("finetune: the cut model's loss differs from the whole model's; training the whole model")
        prefix = None
    if prefix is None:
        yield None
        return
    say(f"finetune: layers 0-{prefix.first - 1} are frozen: run once per example, not every epoch")
    with prefix.cut():
        yield prefix


def train_lora(model, tokenizer, examples, *, num_epochs, batch_size, grad_accum, learning_rate, schedule,
               warmup_ratio, seed, precision="fp32", checkpoint=None, checkpoint_every=50, progress=True,
               frozen_prefix=True):
    """Train the trainable (LoRA) parameters on encoded examples; returns (model, per-step log, step resumed from).
    precision "bf16" runs forward passes under bf16 autocast (the trainable weights and the optimizer stay fp32).
    frozen_prefix: the untrained layers below the first trained one run once per example (FrozenPrefix)."""
    import torch
    from accelerate import Accelerator

    from stages.common.chat import answer_loss, collate
    from stages.common.models import frozen_in_bf16
    from stages.common.progress import bar as progress_bar

    accelerator = Accelerator()
    device = accelerator.device.type
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    batches = batch_schedule([len(e["input_ids"]) for e in examples], batch_size, num_epochs, seed)
    # Each process takes every n-th batch; an optimizer step is grad_accum micro-batches on every process. Every
    # process needs as many micro-batches as the others (a gradient all-reduce waits for all): the last
    # len % n batches of the last epoch are left out (at most n - 1; none with one process).
    processes = accelerator.num_processes
    batches = batches[:len(batches) - len(batches) % processes][accelerator.process_index::processes]
    total_steps = math.ceil(len(batches) / grad_accum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(schedule, round(warmup_ratio * total_steps), total_steps))
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    log, done_micro, resumed_from = [], 0, 0
    resumed = checkpoint.load(params, optimizer, scheduler) if checkpoint else None
    if resumed:
        log, done_micro, resumed_from = resumed["log"], resumed["micro"], len(resumed["log"])
    window_loss, window_tokens, started = 0.0, 0, time.perf_counter()
    bar = progress_bar(total=total_steps, initial=len(log), what="finetune", unit="step",
                       disable=not progress or not accelerator.is_main_process)
    # frozen weights stored in bf16 under bf16 autocast (one process: FSDP wants one dtype in its flat parameters)
    with frozen_in_bf16(model, enabled=precision == "bf16" and accelerator.num_processes == 1), \
            _frozen_prefix(model, tokenizer, examples, batches[min(done_micro, len(batches) - 1)], precision,
                           enabled=frozen_prefix and processes == 1 and done_micro < len(batches),
                           say=bar.write) as prefix:
        for micro in range(done_micro, len(batches)):
            batch = collate([examples[i] for i in batches[micro]], tokenizer.pad_token_id)
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            if prefix:
                batch = prefix.add(batch, batches[micro])
            with _autocast(device, precision):
                loss = answer_loss(model, batch)
            accelerator.backward(loss / grad_accum)
            window_loss += loss.item() / grad_accum
            window_tokens += int(batch["attention_mask"].sum())
            if (micro + 1) % grad_accum and micro + 1 < len(batches):
                continue
            if processes > 1:  # the global batch's loss and tokens, as one process would log them
                totals = accelerator.reduce(torch.tensor([window_loss, window_tokens], dtype=torch.float64,
                                                         device=accelerator.device), reduction="sum")
                window_loss, window_tokens = float(totals[0]) / processes, int(totals[1])
            accelerator.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - started
            log.append({"step": len(log) + 1, "micro_batches": micro + 1, "loss": window_loss,
                        "learning_rate": scheduler.get_last_lr()[0], "tokens_per_s": window_tokens / elapsed,
                        "peak_memory_gb": peak_memory_gb(device)})
            bar.update(1)
            bar.set_postfix(loss=f"{window_loss:.3f}", tok_s=f"{log[-1]['tokens_per_s']:.0f}")
            window_loss, window_tokens, started = 0.0, 0, time.perf_counter()
            if checkpoint and accelerator.is_main_process and len(log) % checkpoint_every == 0:
                checkpoint.save(params, optimizer, scheduler, {"micro": micro + 1, "log": log})
    bar.close()
    model.eval()
    return accelerator.unwrap_model(model), log, resumed_from

"""Recovery attacks on one loaded model (docs/metrics.md §D): relearning, quantization, sampling leakage.

Each attack leaves the model as it found it (relearning removes its LoRA, quantization restores the weights), so
one model load serves the whole evaluation. The same code attacks the unlearned model and the retain model (the
control), with the same seed, data and steps.
"""

import random
import threading
from contextlib import contextmanager

from stages.common.chat import answer_loss, collate, encode_examples, format_prompt
from stages.common.progress import tracked
from stages.evaluate.metrics import contains_answer
from stages.evaluate.probes import accuracy


def split_patients(records, seed):
    """Halves T (relearned on) and V (measured) of the forget records' ids: a seeded shuffle of the sorted patients
    (intervals.subject: a TOFU author's questions stay on one side, as a patient's facts do)."""
    from stages.evaluate.intervals import subject

    subjects = sorted({subject(r["id"]) for r in records})
    random.Random(seed).shuffle(subjects)
    half = (len(subjects) + 1) // 2
    side = {s: i < half for i, s in enumerate(subjects)}
    return sorted(r["id"] for r in records if side[subject(r["id"])]), sorted(
        r["id"] for r in records if not side[subject(r["id"])])


def weights_changed():
    """Call after changing a model's weights in place while autocast may be on (evaluate --precision bf16 measures
    inside one autocast region): autocast keeps the bf16 copy of every float32 weight that requires grad (and,
    under measure.measuring(), of every frozen one) until the outermost autocast region ends, so without this the
    next forward pass would still use the old weights (a relearning LoRA would stay at its zero start, a quantized
    model would answer as the original). The cache is one for all threads: clearing it costs the others a recast."""
    import torch

    torch.clear_autocast_cache()


_SEEDED = threading.Lock()  # seeding the global RNG and drawing a LoRA's initial weights happen together


def relearn(model, tokenizer, pairs, steps, measure, lora_rank, lora_alpha, learning_rate, batch_size,
            max_length, seed, precision="fp32", what="relearning"):
    """Fine-tune a fresh LoRA on (question, answer) pairs and call measure(model, tokenizer) after each k in `steps`
    (k = 0 is the model as given, measured through the fresh LoRA). Returns {k: measure's result}; the LoRA is
    removed afterwards. precision "bf16" runs the training forward passes under bf16 autocast (the LoRA weights
    and the optimizer stay float32; measure() runs outside it). `what` names its progress."""
    import torch
    from peft import get_peft_model

    from stages.common.measure import to_device
    from stages.common.models import lora_config
    from stages.common.seeding import seed_everything

    examples, _ = encode_examples(tokenizer, pairs, max_length)
    with _SEEDED:
        seed_everything(seed)
        attacked = get_peft_model(model, lora_config(model, lora_rank, lora_alpha))
    optimizer = torch.optim.AdamW([p for p in attacked.parameters() if p.requires_grad], lr=learning_rate)
    rng = random.Random(seed)
    order, results = [], {}

    def measured(k):
        results[k] = measure(attacked, tokenizer)
        # the measurement's casts of the LoRA weights were made under no_grad: a torch without pytorch#165068
        # would hand them to the next training step, which would then have no gradient to follow
        weights_changed()

    try:
        if 0 in steps:
            measured(0)
        for done in tracked(range(1, max(steps, default=0) + 1), what, unit="step"):
            if len(order) < batch_size:
                order += rng.sample(range(len(examples)), len(examples))
            batch = to_device(collate([examples[i] for i in order[:batch_size]], tokenizer.pad_token_id),
                              model.device)
            del order[:batch_size]
            with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = answer_loss(attacked, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            weights_changed()
            if done in steps:
                measured(done)
    finally:
        attacked.unload()
        weights_changed()
    return results


def relearn_all(model, tokenizer, jobs, steps, **settings):
    """relearn() for each of jobs {name: (pairs, measure)}: {name: {k: result}}, each job from the model as given.

    On a CPU with a core per job, the jobs run at once, each on its own copy of the model and tokenizer with one
    core (a small model's matrices keep one core busier than two: 1.2x here); otherwise one after the other."""
    import contextvars
    import copy
    from concurrent.futures import ThreadPoolExecutor

    import torch

    threads = torch.get_num_threads()
    if model.device.type != "cpu" or len(jobs) < 2 or threads < len(jobs):
        return {name: relearn(model, tokenizer, pairs, steps, measure, what=f"relearning ({name})", **settings)
                for name, (pairs, measure) in jobs.items()}
    copies = [(model, tokenizer)] + [(copy.deepcopy(model), copy.deepcopy(tokenizer)) for _ in range(len(jobs) - 1)]
    # autocast is per thread: each job measures under the caller's (evaluate --precision)
    device = model.device.type
    autocast = dict(device_type=device, dtype=torch.get_autocast_dtype(device),
                    enabled=torch.is_autocast_enabled(device))

    def job(*args, **kwargs):
        with torch.autocast(**autocast):
            return relearn(*args, **kwargs)

    torch.set_num_threads(threads // len(jobs))
    try:
        with ThreadPoolExecutor(len(jobs)) as pool:
            # each job in a copy of the caller's context: its progress shows under the caller's section
            futures = {name: pool.submit(contextvars.copy_context().run, job, m, t, pairs, steps, measure,
                                         what=f"relearning ({name})", **settings)
                       for (name, (pairs, measure)), (m, t) in zip(jobs.items(), copies, strict=True)}
            return {name: future.result() for name, future in futures.items()}
    finally:
        torch.set_num_threads(threads)


def fake_quantize_(weight, bits, group_size=64):
    """Round-to-nearest, symmetric absmax quantization of each group of `group_size` input weights of every row,
    in place (dequantized back to the weight's dtype)."""
    import torch

    out_features, in_features = weight.shape
    pad = (-in_features) % group_size
    w = torch.nn.functional.pad(weight.data.float(), (0, pad)).view(out_features, -1, group_size)
    levels = 2 ** (bits - 1) - 1
    scale = w.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / levels
    q = (w / scale).round().clamp(-levels, levels) * scale
    weight.data.copy_(q.view(out_features, -1)[:, :in_features].to(weight.dtype))


@contextmanager
def quantized(model, bits, group_size=64):
    """Inside: every linear weight of the model (but the output head) fake-quantized to `bits`; restored after."""
    from stages.common.models import linear_layers

    layers = linear_layers(model)
    saved = [module.weight.data.clone() for _, module in layers]
    try:
        for _, module in layers:
            fake_quantize_(module.weight, bits, group_size)
        weights_changed()
        yield model
    finally:
        for (_, module), weight in zip(layers, saved, strict=True):
            module.weight.data.copy_(weight)
        weights_changed()


def quantized_accuracy(model, tokenizer, probes, bits, max_new_tokens, group_size=64, batch_size=16):
    """Probe accuracy of the model fake-quantized to `bits` (quantized()); weights restored."""
    with quantized(model, bits, group_size):
        return accuracy(model, tokenizer, probes, max_new_tokens, batch_size)


@contextmanager
def bnb_quantized(model, bits, quant_type="nf4"):
    """Inside: every linear layer of the model (but the output head, which bitsandbytes loading keeps too) swapped
    for bitsandbytes' own layer holding its weight quantized in memory, as `from_pretrained(quantization_config=...)`
    would load it: LLM.int8 (Linear8bitLt, outlier threshold 6) at 8 bits, Linear4bit (nf4 or fp4, bf16 compute where
    native) at 4; on a GPU or a CPU alike, with nothing written to disk. The original layers are put back after."""
    from stages.common.models import to_bnb

    swapped = []
    try:
        to_bnb(model, bits, quant_type, swapped)
        yield model
    finally:
        for parent, child, module in swapped:
            setattr(parent, child, module)


def bnb_quantized_accuracy(model, tokenizer, probes, bits, max_new_tokens, quant_type="nf4", batch_size=16):
    """Probe accuracy of the model quantized in memory through bitsandbytes (bnb_quantized); layers restored."""
    import logging
    import warnings

    # LLM.int8 casts its inputs to float16 by design and says so on every layer call (a warning, and a log record)
    log = logging.getLogger("bitsandbytes.autograd._functions")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with bnb_quantized(model, bits, quant_type), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
            return accuracy(model, tokenizer, probes, max_new_tokens, batch_size)
    finally:
        log.setLevel(level)


def leak_counts(model, tokenizer, probes, num_samples, max_new_tokens, seed, temperature=1.0):
    """Per probe, how many of `num_samples` sampled answers contain the true answer."""
    from stages.common.measure import sample_responses
    from stages.common.seeding import seed_everything

    seed_everything(seed)
    prompts = [format_prompt(tokenizer, p["question"]) for p in probes]
    samples = sample_responses(model, tokenizer, prompts, num_samples, max_new_tokens, temperature=temperature)
    return [sum(contains_answer(s, p["answer"]) for s in texts) for p, texts in zip(probes, samples, strict=True)]

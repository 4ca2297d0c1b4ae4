"""Representation misdirection for unlearning (RMU, Li et al. 2024), as WMDP's rmu/unlearn.py does it.

- Steered: the output of decoder layer `rmu_layer` (model.model.layers[rmu_layer], numbered from 0; WMDP's
  --layer_id 7), the forward pass stopped right after it.
- Forget term: masked MSE of that output on forget text to a fixed control vector, WMDP's torch.rand(hidden_size)
  normalised (seeded), of length `steering_coeff` if given, else `steering_scale` x the frozen oracle's mean per-token
  activation norm at that layer on the forget set (Adaptive RMU, Dang et al. 2024: WMDP's 6.5 is Zephyr-7B's).
- Retain term: masked MSE of that output on retain text to the frozen oracle's (the shared reference); the loop
  weights it by `rmu_alpha` (WMDP's alpha).
- Trained: only the down_proj weights of layers rmu_layer-2..rmu_layer (WMDP's --layer_ids 5,6,7 --param_ids 6):
  their LoRA factors on an adapter, the weights themselves with --full; everything else is frozen.
"""

import torch

from stages.common.io import InputError

uses_retain = True
UPDATED_LAYERS = 3  # rmu_layer and the two below it, as WMDP's 5,6,7 for layer 7


class _Stop(Exception):
    """Raised by the capture hook: nothing after the steered layer is needed."""


def decoder_layers(model):
    return model.get_decoder().layers


def activations(model, batch, layer):
    """The output of decoder layer `layer` (WMDP's forward_with_cache on model.model.layers[layer])."""
    captured = []

    def capture(module, inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _Stop

    handle = decoder_layers(model)[layer].register_forward_hook(capture)
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured[0]


def updated_layers(layer):
    return range(max(0, layer - UPDATED_LAYERS + 1), layer + 1)


def trainable(model, ctx):
    """The parameters rmu trains: the trainable ones of down_proj in layers rmu_layer-2..rmu_layer (LoRA factors, or
    with --full the weights); every other parameter gets requires_grad False."""
    layers = decoder_layers(model)
    chosen = []
    for i in updated_layers(ctx["rmu_layer"]):
        down_proj = getattr(getattr(layers[i], "mlp", None), "down_proj", None)
        if down_proj is None:
            raise InputError(f"rmu trains mlp.down_proj of decoder layer {i}, which this model does not have.")
        chosen += [p for p in down_proj.parameters() if p.requires_grad]
    if not chosen:
        raise InputError("rmu trains the down_proj LoRA of the steered layers, and the oracle adapter has none there "
                         "(finetune with --lora-targets including down_proj, or unlearn with --full).")
    keep = {id(p) for p in chosen}
    for p in model.parameters():
        if id(p) not in keep:
            p.requires_grad_(False)
    return chosen


def mean_activation_norm(model, batches, layer):
    """The mean L2 norm of the layer's output over every real (attention-mask) token of `batches`."""
    total, tokens = 0.0, 0.0
    with torch.no_grad():
        for batch in batches:
            norms = activations(model, batch, layer).float().norm(dim=-1)
            mask = batch["attention_mask"].to(norms.dtype)
            total += float((norms * mask).sum())
            tokens += float(mask.sum())
    return total / tokens


def setup(model, ctx, forget_batches):
    """The control vector, once, on the frozen oracle: a seeded uniform random direction, normalised, times the
    steering coefficient (absolute, or steering_scale x the mean activation norm on the forget set)."""
    coeff = ctx.get("steering_coeff")
    if coeff is None:
        norm = mean_activation_norm(model, forget_batches, ctx["rmu_layer"])
        coeff = ctx.get("steering_scale", 5.0) * norm
        ctx["summary"] = {"rmu_activation_norm": norm}
    ctx.setdefault("summary", {})["rmu_steering_coeff"] = coeff
    generator = torch.Generator().manual_seed(ctx.get("seed", 0))
    direction = torch.rand(model.config.hidden_size, generator=generator)
    ctx["control"] = (coeff * direction / direction.norm()).to(model.device)


def _masked_mse(hidden, target, mask):
    mask = mask.unsqueeze(-1).float()
    return (((hidden.float() - target.float()) ** 2) * mask).sum() / (mask.sum() * hidden.shape[-1])


def forget_loss(model, forget_batch, ctx):
    hidden = activations(model, forget_batch, ctx["rmu_layer"])
    return _masked_mse(hidden, ctx["control"].expand_as(hidden), forget_batch["attention_mask"])


def retain_loss(model, retain_batch, ctx):
    with ctx["reference"].active():
        frozen = activations(model, retain_batch, ctx["rmu_layer"])
    updated = activations(model, retain_batch, ctx["rmu_layer"])
    return _masked_mse(updated, frozen, retain_batch["attention_mask"])

"""Representation misdirection for unlearning (RMU, Li et al. 2024, WMDP): push layer `rmu_layer`'s activations on
forget text towards a fixed random direction scaled by `steering_coeff`; keep retain activations at the frozen
oracle's (the shared reference), weighted by the shared retain weight."""

import torch

uses_retain = True


def _hidden(model, batch, layer):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    return out.hidden_states[layer]


def setup(model, ctx):
    """The control vector: a random unit direction (seeded) times the steering coefficient."""
    generator = torch.Generator().manual_seed(ctx.get("seed", 0))
    hidden_size = model.config.hidden_size
    direction = torch.rand(hidden_size, generator=generator)
    ctx["control"] = (ctx.get("steering_coeff", 6.5) * direction / direction.norm()).to(model.device)


def _masked_mse(hidden, target, mask):
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (((hidden.float() - target.float()) ** 2) * mask).sum() / (mask.sum() * hidden.shape[-1])


def forget_loss(model, forget_batch, ctx):
    hidden = _hidden(model, forget_batch, ctx.get("rmu_layer", 7))
    return _masked_mse(hidden, ctx["control"].expand_as(hidden), forget_batch["attention_mask"])


def retain_loss(model, retain_batch, ctx):
    layer = ctx.get("rmu_layer", 7)
    with ctx["reference"].active():
        frozen = _hidden(model, retain_batch, layer)
    return _masked_mse(_hidden(model, retain_batch, layer), frozen, retain_batch["attention_mask"])

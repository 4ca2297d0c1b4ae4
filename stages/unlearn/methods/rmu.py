"""Representation misdirection for unlearning (RMU, Li et al. 2024), as WMDP's rmu/unlearn.py does it.

- Steered: the output of decoder layer `rmu_layer` (model.model.layers[rmu_layer], numbered from 0; WMDP's
  --layer_id 7), the forward pass stopped right after it.
- Forget term: masked MSE of that output on forget text to a fixed control vector, WMDP's torch.rand(hidden_size)
  normalised (seeded), of length `steering_coeff` if given, else `steering_scale` x the frozen oracle's mean per-token
  activation norm at that layer on the forget set (Adaptive RMU, Dang et al. 2024: WMDP's 6.5 is Zephyr-7B's).
- Retain term: masked MSE of that output on retain text to the frozen oracle's (the loop's reference), weighted by
  `rmu_alpha` (WMDP's alpha).
- Trained: only the down_proj weights of layers rmu_layer-2..rmu_layer (WMDP's --layer_ids 5,6,7 --param_ids 6):
  their LoRA factors on an adapter, the weights themselves with --full; everything else is frozen.
"""

from dataclasses import dataclass
from typing import ClassVar

import click

from stages.common.io import InputError
from stages.unlearn.methods import Method, option

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


def mean_activation_norm(model, batches, layer):
    """The mean L2 norm of the layer's output over every real (attention-mask) token of `batches`."""
    import torch

    total, tokens = 0.0, 0.0
    with torch.no_grad():
        for batch in batches:
            norms = activations(model, batch, layer).float().norm(dim=-1)
            mask = batch["attention_mask"].to(norms.dtype)
            total += float((norms * mask).sum())
            tokens += float(mask.sum())
    return total / tokens


def _masked_mse(hidden, target, mask):
    mask = mask.unsqueeze(-1).float()
    return (((hidden.float() - target.float()) ** 2) * mask).sum() / (mask.sum() * hidden.shape[-1])


@dataclass
class RMU(Method):
    name = "rmu"
    uses_retain: ClassVar[bool] = True
    rmu_layer: int = option(7, click.IntRange(min=0),
                            "The decoder layer whose output is steered, numbered from 0 (model.model.layers[N], "
                            "WMDP's layer_id); the down_proj weights of it and the two layers below it are the "
                            "ones trained.")
    rmu_alpha: float = option(1200.0, click.FloatRange(min=0),
                              "Weight of the retain activation MSE (WMDP's alpha, Zephyr-7B's value).")
    steering_scale: float = option(5.0, click.FloatRange(min=0, min_open=True),
                                   "Length of the random control vector as a multiple of the oracle's mean "
                                   "per-token activation norm at --rmu-layer on the forget set (Adaptive RMU's "
                                   "scale).")
    steering_coeff: float | None = option(None, click.FloatRange(min=0, min_open=True),
                                          "Absolute length of the control vector, instead of --steering-scale "
                                          "(WMDP used 6.5 on Zephyr-7B).")

    def check(self, model_config):
        layers = model_config.num_hidden_layers
        if self.rmu_layer >= layers:
            raise click.BadParameter(f"{self.rmu_layer} is beyond the model's {layers} layers (numbered 0 to "
                                     f"{layers - 1})", param_hint="--rmu-layer")

    def trainable(self, model):
        """The trainable parameters of down_proj in layers rmu_layer-2..rmu_layer (LoRA factors, or with --full
        the weights); every other parameter gets requires_grad False."""
        layers = decoder_layers(model)
        chosen = []
        for i in updated_layers(self.rmu_layer):
            down_proj = getattr(getattr(layers[i], "mlp", None), "down_proj", None)
            if down_proj is None:
                raise InputError(f"rmu trains mlp.down_proj of decoder layer {i}, which this model does not have.")
            chosen += [p for p in down_proj.parameters() if p.requires_grad]
        if not chosen:
            raise InputError("rmu trains the down_proj LoRA of the steered layers, and the oracle adapter has none "
                             "there (finetune with --lora-targets including down_proj, or unlearn with --full).")
        keep = {id(p) for p in chosen}
        for p in model.parameters():
            if id(p) not in keep:
                p.requires_grad_(False)
        return chosen

    def prepare(self, model, reference, forget_batches, seed):
        """The control vector, once, on the frozen oracle: a seeded uniform random direction, normalised, times the
        steering coefficient (absolute, or steering_scale x the mean activation norm on the forget set)."""
        import torch

        self.reference = reference
        summary, coeff = {}, self.steering_coeff
        if coeff is None:
            norm = mean_activation_norm(model, forget_batches, self.rmu_layer)
            coeff = self.steering_scale * norm
            summary["rmu_activation_norm"] = norm
        summary["rmu_steering_coeff"] = coeff
        direction = torch.rand(model.config.hidden_size, generator=torch.Generator().manual_seed(seed))
        self.control = (coeff * direction / direction.norm()).to(model.device)
        return summary

    def forget_loss(self, model, batch):
        hidden = activations(model, batch.forget, self.rmu_layer)
        return _masked_mse(hidden, self.control.expand_as(hidden), batch.forget["attention_mask"])

    def retain_loss(self, model, retain_batch):
        with self.reference.active():
            frozen = activations(model, retain_batch, self.rmu_layer)
        updated = activations(model, retain_batch, self.rmu_layer)
        return _masked_mse(updated, frozen, retain_batch["attention_mask"])

    def loss(self, model, batch):
        retain = self.rmu_alpha * self.retain_loss(model, batch.retain)  # first: it swaps the frozen oracle in
        return self.forget_loss(model, batch) + retain

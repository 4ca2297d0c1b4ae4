"""Unlearning methods, one module each, found by module name: `--method npo` loads methods/npo.py.

A method module defines:
- `forget_loss(model, forget_batch, ctx)`: the term on the forget set, to minimise. `ctx` holds the
  hyperparameters (`beta`, `gamma`, `rmu_layer`, ...), `reference` (the frozen oracle, see loop.Reference) and, for
  methods with `needs_reference`, `reference_nll`: each row's summed answer NLL under the frozen oracle, computed
  once before unlearning;
- `uses_retain`: whether the loop adds a retain term, `retain_weight * retain_loss(model, retain_batch, ctx)` if the
  module defines `retain_loss`, else `retain_weight * NLL(retain)`;
- optionally `needs_reference = True`, and `forget_pairs(pairs)` to rewrite the forget (question, answer) pairs;
- optionally `trainable(model, ctx)`: the parameters to train (it sets requires_grad False on the others), called
  before the optimizer and the reference snapshot; without it, every parameter with requires_grad trains;
- optionally `setup(model, ctx, forget_batches)`: called once before the first step, on the frozen oracle, with
  every forget example in micro-batches; what it puts in `ctx["summary"]` (a dict) goes into summary.json.
"""

import importlib
import pkgutil


def available():
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get(name):
    if name not in available():
        raise ValueError(f"unknown unlearning method '{name}' (available: {', '.join(available())})")
    return importlib.import_module(f"{__name__}.{name}")

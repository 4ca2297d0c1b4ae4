"""Unlearning methods, one module each, found by module name: `--method npo` loads methods/npo.py.

A method module defines `forget_loss(model, forget_batch)` (the term on the forget set, to minimise) and
`uses_retain` (whether the loop adds the shared retain term `retain_weight * NLL(retain)`).
"""

import importlib
import pkgutil


def available():
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get(name):
    if name not in available():
        raise ValueError(f"unknown unlearning method '{name}' (available: {', '.join(available())})")
    return importlib.import_module(f"{__name__}.{name}")

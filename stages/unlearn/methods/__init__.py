"""Unlearning methods: one class per file in this folder, found by its `name` (`--method npo`: npo.py's NPO).

A method is a dataclass whose fields are its hyperparameters; `option()` gives each field its click type and help,
and unlearn's CLI has one option per field name (`--beta`, `--rmu-layer`), so a new method with a new
hyperparameter is one new file. The loop knows no method by name; it calls, in this order:
- `check(model_config)`: before the model is loaded; an InputError if the model cannot be unlearned this way;
- `forget_pairs(pairs)`: the forget (question, answer) pairs to train on (idk: refusals instead of the answers);
- `trainable(model)`: the parameters to train (default: every one that requires grad; a method that picks a few
  freezes the rest);
- `prepare(model, reference, forget_batches, seed)`: once, on the frozen oracle, with every forget example in
  micro-batches: what the method needs (NPO's reference NLL, RMU's control vector); returns a dict for summary.json;
- `loss(model, batch)` on every micro-batch: the step's loss, to minimise (`uses_retain`: whether `batch.retain`
  holds a retain batch).
"""

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import click

from stages.common.chat import answer_loss


def option(default, type, help):
    """A hyperparameter: a dataclass field with the click type and help of its unlearn option."""
    return dataclasses.field(default=default, metadata={"type": type, "help": help})


class Batch(NamedTuple):
    """One micro-batch: the collated forget examples, their rows in the forget set, and a retain batch of the same
    size (None for a method without a retain term)."""
    forget: dict
    rows: list
    retain: dict | None


@dataclass
class Method:
    """A method without a retain term; subclasses set `name` and define forget_loss."""
    name: ClassVar[str] = ""
    uses_retain: ClassVar[bool] = False

    def check(self, model_config):
        pass

    def forget_pairs(self, pairs):
        return pairs

    def trainable(self, model):
        return [p for p in model.parameters() if p.requires_grad]

    def prepare(self, model, reference, forget_batches, seed):
        return {}

    def forget_loss(self, model, batch):
        raise NotImplementedError

    def loss(self, model, batch):
        return self.forget_loss(model, batch)


@dataclass
class WithRetain(Method):
    """A method whose loss adds `retain_weight` x a retain term (the retain NLL unless retain_loss says otherwise)."""
    uses_retain: ClassVar[bool] = True
    retain_weight: float = option(1.0, click.FloatRange(min=0), "Weight of the retain term.")

    def retain_loss(self, model, retain_batch):
        return answer_loss(model, retain_batch)

    def loss(self, model, batch):
        retain = self.retain_weight * self.retain_loss(model, batch.retain)
        return self.forget_loss(model, batch) + retain


def _load():
    """{name: class} of every method in this folder (importing a module registers nothing: its Method subclasses
    with a name are the methods)."""
    found = {}
    for module in pkgutil.iter_modules(__path__):
        if module.name.startswith("_"):
            continue
        loaded = importlib.import_module(f"{__name__}.{module.name}")
        for value in vars(loaded).values():
            if isinstance(value, type) and issubclass(value, Method) and value.name and value.__module__ == \
                    loaded.__name__:
                if value.name in found:
                    raise ValueError(f"two unlearning methods are named '{value.name}'")
                found[value.name] = value
    return dict(sorted(found.items()))


_METHODS = None


def registry():
    global _METHODS
    if _METHODS is None:
        _METHODS = _load()
    return _METHODS


def available():
    return list(registry())


def get(name):
    """The class of method `name`."""
    if name not in registry():
        raise ValueError(f"unknown unlearning method '{name}' (available: {', '.join(available())})")
    return registry()[name]


def hyperparameters():
    """{field name: (field, the methods that have it)} over every method; a name two methods share must mean one
    thing (the same default, type and help)."""
    found = {}
    for name, cls in registry().items():
        for f in dataclasses.fields(cls):
            if f.name in found:
                first = found[f.name][0]
                if (f.default, f.metadata["help"], repr(f.metadata["type"])) != \
                        (first.default, first.metadata["help"], repr(first.metadata["type"])):
                    raise ValueError(f"methods disagree on hyperparameter '{f.name}'")
                found[f.name][1].append(name)
            else:
                found[f.name] = (f, [name])
    return found


def hyperparameter_options(command):
    """Decorator: one click option per method hyperparameter (--retain-weight, --beta, ...), its help naming the
    methods that use it."""
    for name, (f, users) in reversed(hyperparameters().items()):
        flags = dict.fromkeys([f"--{name.replace('_', '-')}", f"--{name}"])  # the dash and underscore spellings
        command = click.option(*flags, name, type=f.metadata["type"], default=f.default,
                               show_default=f.default is not None,
                               help=f"{f.metadata['help']} [{', '.join(users)}]")(command)
    return command


def build(name, settings):
    """Method `name` with its hyperparameters taken from `settings` (the unlearn options, by field name)."""
    cls = get(name)
    return cls(**{f.name: settings[f.name] for f in dataclasses.fields(cls)})

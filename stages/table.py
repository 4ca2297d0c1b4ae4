"""The one table of the pipeline's stages. The CLI's subcommands, the image each stage runs in (the runner, the
Makefile's image targets, docker/Dockerfile's build targets) and the params.yaml sections each stage takes
(the params check) all come from here. Plain Python, so the Makefile can read it before anything is installed:

    python3 -m stages.table images      # the stage images, one per line
"""

import sys
from typing import NamedTuple


class Stage(NamedTuple):
    name: str          # the `unforgotten` subcommand (and the dvc.yaml stage it runs)
    command: str       # module:attribute of its click command
    image: str         # the image it runs in: its own, or another stage's
    sections: tuple    # the params.yaml sections dvc.yaml passes to it as options


STAGES = (
    Stage("generate", "stages.generate.cli:generate", "generate", ("generate",)),
    Stage("prepare-medical", "stages.prepare_medical.cli:prepare_medical", "prepare-medical", ("prepare_medical",)),
    Stage("prepare-wmdp", "stages.prepare_wmdp.cli:prepare_wmdp", "prepare-wmdp", ("prepare_wmdp",)),
    Stage("prepare-tofu", "stages.prepare_tofu.cli:prepare_tofu", "prepare-wmdp", ()),
    Stage("finetune", "stages.finetune.cli:finetune", "finetune", ("training", "finetune")),
    Stage("unlearn", "stages.unlearn.cli:unlearn", "unlearn", ("training", "unlearn")),
    Stage("evaluate", "stages.evaluate.cli:evaluate", "evaluate", ("training", "evaluate", "attacks", "verdict")),
    Stage("report", "stages.report.cli:report", "evaluate", ()),
    Stage("verify", "stages.verify.cli:verify", "evaluate", ()),  # reads params.yaml's evaluate sections itself
)


def images():
    """The stage images, in pipeline order."""
    return list(dict.fromkeys(stage.image for stage in STAGES))


def image_of(name):
    """The image stage `name` runs in (a name not in the table is taken as its own image)."""
    return next((stage.image for stage in STAGES if stage.name == name), name)


def sections():
    """{params.yaml section: the stages that take it as options}."""
    found = {}
    for stage in STAGES:
        for section in stage.sections:
            found.setdefault(section, []).append(stage.name)
    return found


def command(stage):
    """The click command of a table row (imports its CLI module, which imports nothing heavy)."""
    import importlib

    module, attribute = stage.command.split(":")
    return getattr(importlib.import_module(module), attribute)


if __name__ == "__main__":
    if sys.argv[1:] != ["images"]:
        sys.exit("usage: python3 -m stages.table images")
    print("\n".join(images()))

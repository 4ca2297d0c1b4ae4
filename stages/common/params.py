"""params.yaml: the one place that holds every knob; stages get their values through dvc.yaml's ${...}."""

from pathlib import Path

import yaml


def load_params(path="params.yaml"):
    with open(Path(path), encoding="utf-8") as f:
        return yaml.safe_load(f)


def ratio_tag(ratio):
    """0.1 -> '10', 0.01 -> '01': the NN of SPEC's file names and of run names such as grad_ascent-f10."""
    percent = round(float(ratio) * 100)
    if not 0 < percent < 100 or abs(percent - float(ratio) * 100) > 1e-6:
        raise ValueError(f"forget ratio {ratio} is not a whole percentage between 1 % and 99 %")
    return f"{percent:02d}"

"""The one writer of bench/results/<name>.json: name, baseline, ours, unit, ratio, params, machine, date."""

import json
from pathlib import Path

from machine import machine

RESULTS = Path(__file__).resolve().parent / "results"


def write_result(name, baseline, ours, unit, params, higher_is_better=False, **extra):
    """ratio = baseline / ours for times (lower is better), ours / baseline for rates such as tokens/s."""
    ratio = (ours / baseline) if higher_is_better else (baseline / ours)
    info = machine()
    result = {"name": name, "baseline": round(baseline, 4), "ours": round(ours, 4), "unit": unit,
              "ratio": round(ratio, 2), **extra, "params": params, "machine": info, "date": info["date"]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result

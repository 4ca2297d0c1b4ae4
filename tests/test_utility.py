"""docs/metrics.md §B: model utility on retain and world facts sees collateral damage. v1's utility (three numbers on
the retain probes) did not move when NPO cut retain-probe accuracy from 0.225 to 0.075."""

import json

import pytest
import torch

from stages.common.models import EMBEDDED, load_model, load_tokenizer
from stages.evaluate.compare import utility_ratio
from stages.evaluate.measurements import probe_summary
from stages.evaluate.probes import probe_rows
from stages.evaluate.world import world_records

NOISE = 0.35  # Gaussian noise on every decoder weight, times that weight's own standard deviation


def damage_(model, scale, seed=0):
    """Add seeded Gaussian noise (scale x the tensor's std) to every linear weight of the decoder, in place."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and "layers" in name:
                noise = torch.randn(module.weight.shape, generator=generator)
                module.weight.add_(noise.to(module.weight.dtype) * module.weight.float().std() * scale)


@pytest.fixture(scope="module")
def measured(medical_dir):
    """Probe rows on R and W of the embedded model, before and after damage that costs it half its knowledge."""
    tokenizer = load_tokenizer(EMBEDDED)
    retain = json.loads((medical_dir / "med_synthetic_full_minus_forget20.json").read_text())[:4]
    sets = {"retain": retain, "world": world_records()}
    rows = {}
    for name in ("intact", "damaged"):
        model = load_model(EMBEDDED).eval()
        if name == "damaged":
            damage_(model, NOISE)
        rows[name] = probe_rows(model, tokenizer, sets, 16, 256, 32)
    return rows


def test_damage_that_halves_what_the_model_knows_lowers_model_utility(measured):
    intact, damaged = (probe_summary(measured[name], 200, 0) for name in ("intact", "damaged"))
    # the precondition: the damage costs the model about half of the facts it answered
    assert damaged["world_qa_accuracy"] <= 0.6 * intact["world_qa_accuracy"]
    assert intact["world_qa_accuracy"] >= 0.95
    # utility falls below the REMOVED rule's 0.9 x the undamaged model's, and its joint interval says so too
    assert damaged["model_utility"] < 0.9 * intact["model_utility"]
    value, (low, high) = utility_ratio(measured["damaged"], measured["intact"], 200, 0)
    assert value == pytest.approx(damaged["model_utility"] / intact["model_utility"])
    assert high < 0.9
    value, (low, high) = utility_ratio(measured["intact"], measured["intact"], 200, 0)
    assert value == pytest.approx(1.0) and low <= 1.0 <= high

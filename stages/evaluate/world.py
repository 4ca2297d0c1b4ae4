"""World facts: general-knowledge probes the embedded base model answers correctly, for collateral damage."""

from pathlib import Path

from stages.common.io import read_json

WORLD_FACTS = Path(__file__).with_name("world_facts.json")


def world_records(path=WORLD_FACTS):
    """The world-fact probes as records, each question its own record (its own sampling unit)."""
    return [{"id": p["id"], "probes": [p]} for p in read_json(path)]

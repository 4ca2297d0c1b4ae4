"""`make data`: a snapshot of the hub's TOFU (locuslab/TOFU) in data/tofu/<config>.json (then tracked by data.dvc),
the files prepare-tofu reads, so a team pulls one fixed copy instead of each member reading the hub. Unreachable
hub: says so and leaves data/ as it is.

    python -m stages.prepare_tofu.fetch data/tofu
"""

import os
import sys
from pathlib import Path

from stages.common.io import InputError, atomic_dir, write_jsonl
from stages.common.retry import GiveUp
from stages.prepare_tofu.convert import FORGET_SPLITS, load_optional_split, load_split

REQUIRED = ["full", "retain_perturbed", *(f"{s}{p}" for s in FORGET_SPLITS.values() for p in ("", "_perturbed"))]
OPTIONAL = [f"holdout{tag}" for tag in FORGET_SPLITS]  # newer than the rest: a snapshot without them still works


def fetch(output, source="hub", token=None):
    """Write every config prepare-tofu reads as JSON Lines; returns {config: number of rows}, or None if the hub is
    unreachable or a load fails (then nothing is written: an earlier snapshot stays whole)."""
    token = token or os.environ.get("HF_TOKEN")
    try:
        rows = {config: load_split(source, config, token) for config in REQUIRED}
        rows.update({config: found for config in OPTIONAL if (found := load_optional_split(source, config, token))})
    except (InputError, GiveUp) as error:  # offline, gated, or still failing after the retries
        print(f"make data: {error} {output} is unchanged.", file=sys.stderr)
        return None
    with atomic_dir(Path(output)) as tmp:
        for config, found in rows.items():
            write_jsonl(tmp / f"{config}.json", found)
    print(f"make data: TOFU's {len(rows)} configs ({sum(map(len, rows.values()))} rows) written to {output}")
    return {config: len(found) for config, found in rows.items()}


if __name__ == "__main__":
    fetch(sys.argv[1] if len(sys.argv) > 1 else "data/tofu")

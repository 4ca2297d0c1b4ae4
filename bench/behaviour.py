"""Behaviour check for refactors: the micro pipeline's outputs, hashed, before and after a change.

Builds the micro profile (tests/micro.py: the real dvc.yaml, stages and params with a tiny seeded Llama) in a fresh
repository, runs `dvc repro`, and records the sha256 of every file the stages wrote under dataset/, models/ and
outputs/ but finetune's timings beside each adapter (<output-dir>.timings.json).
On one machine and thread count the pipeline is byte-for-byte
deterministic (tests/test_crash.py), so a refactor that changes no behaviour leaves every hash as it was. The
stages run are those of the checkout this script is in (a `git worktree` of the commit before the change gives the
first set of hashes).

    python bench/behaviour.py --save /tmp/before.json      # on the code before the change
    python bench/behaviour.py --compare /tmp/before.json   # after it: lists every file that differs, exit 1 if any
"""

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.micro import dvc, make_micro_repo, write_tiny_model  # noqa: E402

TRACKED = ["dataset", "models", "outputs"]
TIMINGS = ".timings.json"  # finetune's tokens/s and seconds beside each adapter: differ on every run


def output_hashes(repo, tmp):
    """{relative path: sha256} of every file the pipeline wrote (but the timing logs), with the temporary folder's
    path (adapters name their base model's directory) written as <tmp>."""
    hashes = {}
    for top in TRACKED:
        for path in sorted((repo / top).rglob("*")):
            if path.is_file() and not path.name.endswith(TIMINGS):
                content = path.read_bytes().replace(str(tmp).encode(), b"<tmp>")
                hashes[str(path.relative_to(repo))] = hashlib.sha256(content).hexdigest()
    return hashes


def micro_hashes():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        repo = make_micro_repo(tmp / "repo", write_tiny_model(tmp / "tiny-llama"))
        dvc(repo, "repro", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))  # this checkout's stages, wherever it is
        return output_hashes(repo, tmp)


def differences(before, after):
    """Lines naming each file missing, added or changed between two hash maps."""
    lines = [f"missing: {p}" for p in sorted(before.keys() - after.keys())]
    lines += [f"added: {p}" for p in sorted(after.keys() - before.keys())]
    lines += [f"changed: {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    return lines


@click.command()
@click.option("--save", type=click.Path(dir_okay=False), help="Write the hashes to this file.")
@click.option("--compare", type=click.Path(exists=True, dir_okay=False), help="Compare with hashes saved before.")
def main(save, compare):
    hashes = micro_hashes()
    if save:
        Path(save).write_text(json.dumps(hashes, indent=1) + "\n")
        print(f"{len(hashes)} files hashed into {save}")
    if compare:
        lines = differences(json.loads(Path(compare).read_text()), hashes)
        print("\n".join(lines) or f"all {len(hashes)} files byte-identical")
        sys.exit(1 if lines else 0)


if __name__ == "__main__":
    main()

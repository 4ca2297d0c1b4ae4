"""Wall time of the data stages at 1k notes: `generate --backend template` and `prepare-medical`, as the CLI runs
them (in-process, so interpreter start-up is not counted). Writes bench/results/data_stages.json."""

import json
import sys
import tempfile
import time
from pathlib import Path

from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine  # noqa: E402

from stages.cli import main  # noqa: E402


def timed(args):
    started = time.perf_counter()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return time.perf_counter() - started


def main_bench(n=1000):
    with tempfile.TemporaryDirectory() as tmp:
        notes = f"{tmp}/notes.jsonl"
        generate = timed(["generate", "--n-record", str(n), "--output", notes])
        prepare = timed(["prepare-medical", "-i", notes, "-o", f"{tmp}/dataset"])
    result = {"name": "data_stages", "unit": "s", "params": {"n_record": n, "backend": "template"},
              "generate_s": round(generate, 3), "prepare_medical_s": round(prepare, 3),
              "target": "generate 1,000 template notes in under 30 s", "machine": machine()}
    out = Path(__file__).parent / "results" / "data_stages.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main_bench()

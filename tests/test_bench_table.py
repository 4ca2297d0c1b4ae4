"""The README's performance table is exactly what bench/results/*.json say."""

import sys

from tests.micro import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import table  # noqa: E402


def test_readme_performance_table_matches_the_result_files():
    assert table.main(check=True) == 0, "README table is stale: run `python bench/table.py`"


def test_every_result_with_a_baseline_has_the_required_fields():
    import json

    for path in sorted((ROOT / "bench/results").glob("*.json")):
        result = json.loads(path.read_text())
        if "baseline" in result:
            assert {"name", "baseline", "ours", "unit", "ratio", "params", "machine", "date"} <= set(result), path
            assert result["name"] == path.stem

import subprocess
import sys

import pytest
from click.testing import CliRunner

from stages.cli import main

STAGES = ["generate", "prepare-medical", "prepare-wmdp", "prepare-tofu", "finetune", "unlearn", "evaluate", "report"]


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_help(stage):
    result = CliRunner().invoke(main, [stage, "--help"])
    assert result.exit_code == 0
    assert result.output.startswith("Usage:") and "--help" in result.output


def test_help_imports_no_heavy_library():
    code = ("import sys; from stages.cli import main\n"
            "try:\n    main(['finetune', '--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'numpy', 'datasets') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


def test_console_script_is_installed():
    bin_dir = __import__("pathlib").Path(sys.executable).parent
    out = subprocess.run([str(bin_dir / "unforgotten"), "--help"], capture_output=True, text=True, check=True)
    assert all(stage in out.stdout for stage in STAGES)


def test_seed_script_underscore_aliases_are_accepted(tmp_path):
    result = CliRunner().invoke(main, ["generate", "--n_record", "2", "--output", str(tmp_path / "n.jsonl")])
    assert result.exit_code == 0
    result = CliRunner().invoke(main, ["prepare-medical", "--input_file", str(tmp_path / "n.jsonl"),
                                       "--output_dir", str(tmp_path / "d"), "--dry_run"])
    assert "--input_file" not in result.output  # parsed, not rejected

"""Profiles (profiles/<name>.yaml): DVC -S overrides on top of params.yaml, with unknown keys refused."""

import subprocess
import sys

import pytest

from stages.common.io import InputError
from stages.profiles import override_value, overrides
from tests.micro import ROOT


def test_the_paper_profile_only_sets_keys_that_params_yaml_has():
    sets = dict(item.split("=", 1) for item in overrides(ROOT / "profiles/paper.yaml", ROOT / "params.yaml"))
    assert sets["base_model"] == '"meta-llama/Llama-3.1-8B-Instruct"'
    assert sets["forget_sets"] == '["01","05","10","20"]'
    assert sets["methods"] == '["grad_ascent","grad_diff","npo","simnpo","idk","rmu"]'
    assert sets["generate.n-record"] == "1000"
    assert sets["finetune.learning-rate"] == "2e-05" and sets["finetune.lora-rank"] == "8"


def test_override_values_follow_the_override_syntax():
    assert override_value(True) == "true" and override_value(0.5) == "0.5" and override_value("a b") == '"a b"'
    assert override_value([0, 10, 50]) == "[0,10,50]"


def test_an_unknown_profile_key_names_the_closest_valid_one(tmp_path):
    (tmp_path / "p.yaml").write_text("finetune:\n  lora-rnk: 4\n")
    with pytest.raises(InputError, match=r"'finetune.lora-rnk' is not a key of .*did you mean 'finetune.lora-rank'"):
        overrides(tmp_path / "p.yaml", ROOT / "params.yaml")


def test_an_unknown_profile_is_one_sentence_listing_the_profiles():
    result = subprocess.run([sys.executable, "-m", "stages.profiles", "run", "nosuch"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: no profile 'nosuch' (profiles/nosuch.yaml); profiles: default, paper."

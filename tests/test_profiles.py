"""Profiles (profiles/<name>.yaml): DVC -S overrides on top of params.yaml, with unknown keys refused."""

import re
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
    assert result.stderr.strip() == ("Error: no profile 'nosuch' (profiles/nosuch.yaml); profiles: default, cpu-power, "
                                     "paper, paper-seed.")


def profile_params(name):
    """params.yaml with the profile's values applied (default: params.yaml itself)."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if name != "default":
        for key, value in yaml.safe_load((ROOT / f"profiles/{name}.yaml").read_text()).items():
            if isinstance(value, dict):
                params[key].update(value)
            else:
                params[key] = value
    return params


def split_sizes(params):
    """Patients per split as prepare-medical makes them, and probes per patient."""
    from stages.common.splits import forget_size

    n = params["generate"]["n-record"]
    holdout = round(n * params["prepare_medical"]["holdout-ratio"])
    forget = forget_size(n - holdout, int(params["forget_sets"][0]) / 100)
    return {"holdout": holdout, "forget": forget, "retain": n - holdout - forget,
            "facts": len(params["prepare_medical"]["probe-facts"])}


@pytest.mark.parametrize("name", ["default", "cpu-power", "paper", "paper-seed"])
def test_every_profile_passes_the_params_check_and_states_only_real_differences(name, tmp_path):
    """Applied to params.yaml, each profile's keys are known and no stage section repeats a setting stated once
    for every stage (`training`, `max_seq_length`); each key it sets differs from params.yaml's."""
    import yaml

    from stages.profiles import check_params, leaves

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(profile_params(name), sort_keys=False))
    check_params(path)
    if name != "default":
        default = dict(leaves(profile_params("default")))
        profile = yaml.safe_load((ROOT / f"profiles/{name}.yaml").read_text())
        assert [key for key, value in leaves(profile) if default[key] == value] == []


def test_a_stage_section_may_not_restate_a_shared_setting(tmp_path):
    import yaml

    from stages.profiles import check_params

    for section, key, shared in (("unlearn", "with-notes", "training.with-notes"),
                                 ("evaluate", "with-probes", "training.with-probes"),
                                 ("finetune", "max-seq-length", "max_seq_length")):
        params = profile_params("default")
        params[section][key] = 64 if key == "max-seq-length" else True
        path = tmp_path / f"{section}.yaml"
        path.write_text(yaml.safe_dump(params, sort_keys=False))
        with pytest.raises(InputError, match=f"'{section}.{key}' is set once for every stage, as '{shared}'"):
            check_params(path)
    assert "max-seq-length" in profile_params("default")["evaluate"]  # evaluate's own: the measurement's length


@pytest.mark.parametrize("name, seeds, forget_probes", [("default", 1, 100), ("cpu-power", 3, 250)])
def test_the_cpu_profiles_have_the_power_they_promise(name, seeds, forget_probes):
    """At least 20 forget and 20 holdout patients, 100 (250) forget probes, 50 probes in the relearning half V,
    100 membership examples a side (a patient's probes; its note too when trained on notes)."""
    params = profile_params(name)
    sizes = split_sizes(params)
    assert len(params["seeds"]) == seeds
    assert sizes["forget"] >= 20 and sizes["holdout"] >= 20
    assert sizes["forget"] * sizes["facts"] >= forget_probes
    assert sizes["forget"] // 2 * sizes["facts"] >= 50
    assert sizes["holdout"] * sizes["facts"] >= 100


def test_models_and_everything_after_them_fan_out_per_seed(tmp_path, tiny_model_dir):
    import yaml
    from dvc.repo import Repo

    from tests.micro import make_micro_repo

    repo = make_micro_repo(tmp_path / "seeds", tiny_model_dir)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["seeds"] = [1, 2]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    commands = {stage.name: stage.cmd for stage in Repo(str(repo)).index.stages if stage.cmd}
    for seed in (1, 2):
        assert f"--seed {seed} " in commands[f"finetune-oracle@{seed}"]
        assert f"models/oracle-s{seed}" in commands[f"finetune-oracle@{seed}"]
        assert f"--output-dir models/retain-f10-s{seed}" in commands[f"finetune-retain@10-{seed}"]
        unlearn = commands[f"unlearn@grad_ascent-10-{seed}"]
        assert f"--oracle models/oracle-s{seed} " in unlearn and f"--seed {seed} " in unlearn
        evaluate = commands[f"evaluate-unlearned@grad_ascent-10-{seed}"]
        assert f"--oracle outputs/eval/oracle-s{seed} " in evaluate
        assert f"--retain outputs/eval/retain-f10-s{seed} " in evaluate
    assert [name for name in commands if name.startswith("evaluate-base")] == ["evaluate-base"]
    # params.yaml's false flags reach the CLI as --no-<flag>, not as the CLI's default
    for stage in ("finetune-oracle@1", "finetune-retain@10-1", "unlearn@grad_ascent-10-1", "evaluate-base",
                  "evaluate-oracle@1", "evaluate-retain@10-1", "evaluate-unlearned@grad_ascent-10-1"):
        assert "--no-with-notes --with-probes" in commands[stage], stage  # the one training section, everywhere
    for stage in ("finetune-oracle@1", "finetune-retain@10-1", "unlearn@grad_ascent-10-1"):
        assert commands[stage].count("--max-seq-length 96") == 1, stage
    # make check-methods passes unlearn the same shared settings as dvc.yaml does
    from stages.profiles import training_args

    shared = training_args(repo / "params.yaml")
    assert shared == ["--no-with-notes", "--with-probes", "--max-seq-length", "96"]
    assert all(arg in commands["unlearn@grad_ascent-10-1"].split() for arg in shared)


@pytest.mark.parametrize("verify, message", [
    (None, "verify: expected a map of run name -> model"),
    (["lab/model"], "verify: expected a map of run name -> model"),
    ({"../escape": "lab/model"}, "'../escape' is not a run name"),
    ({"oracle-s42": "lab/model"}, "'oracle-s42' is not a run name"),
    ({"base": "lab/model"}, "'base' is not a run name"),
    ({"theirs": "my models/npo"}, "theirs: 'my models/npo' is not a directory or hub id"),
    ({"theirs": None}, "theirs: None is not a directory or hub id")])
def test_verify_entries_are_a_map_of_plain_run_names_to_models(verify, message, tmp_path):
    """DVC's foreach needs a map (`verify: null` would fail there, not here), a name becomes a directory beside the
    references, and a model goes on a command line."""
    import yaml

    from stages.profiles import check_params

    params = profile_params("default")
    path = tmp_path / "params.yaml"
    params["verify"] = {"their-npo": "their-lab/smollm2-npo", "local_1": "models/elsewhere"}
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    check_params(path)
    params["verify"] = verify
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(InputError, match=re.escape(message)):
        check_params(path)


TRACK = {"split": "10", "base": "meta-llama/Llama-3.2-1B-Instruct", "oracle": "open-unlearning/tofu_full",
         "retain": "models/retain90", "evaluate": {"chat-template": "t.jinja", "retain-samples": 100}}


@pytest.mark.parametrize("change, message", [
    ({"tofu": {"l": {**TRACK, "split": 10}}}, "split: 10 is not one of TOFU's forget splits"),
    ({"tofu": {"l": {k: v for k, v in TRACK.items() if k != "retain"}}}, "tofu: l: expected split, base, oracle"),
    ({"tofu": {"l": {**TRACK, "evaluate": {"retain-sample": 3}}}}, "'retain-sample' is not an option of evaluate"),
    ({"tofu": {"l": {**TRACK, "oracle": "my model"}}}, "oracle: 'my model' is not a directory or hub id"),
    ({"tofu_verify": {"npo": {"track": "big", "model": "a/b"}}}, "track 'big' is not a track of tofu (l)"),
    ({"tofu_verify": {"retain": {"track": "l", "model": "a/b"}}}, "tofu_verify: retain: not a run name"),
    ({"tofu": {"l": {**TRACK, "evaluate": {"hf-token": "hf_x"}}}}, "'hf-token' is not an option of evaluate"),
    ({"tofu": {"l": {**TRACK, "evaluate": {"output-dir": "x"}}}}, "'output-dir' is not an option of evaluate"),
    ({"evaluate": {"hf-token": "hf_x"}}, "'evaluate.hf-token' is not a known key"),
    ({"tofu": []}, "tofu and tofu_verify: expected maps")])
def test_a_tofu_track_names_its_split_three_references_and_evaluate_options(change, message, tmp_path):
    import yaml

    from stages.profiles import check_params

    params = profile_params("default")
    path = tmp_path / "params.yaml"
    params.update({"tofu": {"l": TRACK}, "tofu_verify": {"npo": {"track": "l", "model": "open-unlearning/npo"}}})
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    check_params(path)  # the README's example passes
    params.update(change)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(InputError, match=re.escape(message)):
        check_params(path)


def test_dvc_expands_a_verify_entry_into_a_stage_with_the_model_on_its_command_line(tmp_path):
    """dvc.yaml's verify foreach, with one entry: DVC's own parser resolves it against the first forget set's and
    seed's references."""
    import shutil

    import yaml
    from dvc.repo import Repo

    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    params = profile_params("default")
    params["verify"] = {"their-npo": "their-lab/smollm2-npo"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    stages = {stage.name: stage for stage in Repo(str(tmp_path)).index.stages}
    stage = stages["verify@their-npo"]
    assert stage.cmd == "unforgotten verify --model their-lab/smollm2-npo --name their-npo --params params.yaml"
    forget, seed = params["forget_sets"][0], params["seeds"][0]
    deps = {dep.def_path for dep in stage.deps}
    assert {"outputs/eval/base", f"outputs/eval/oracle-s{seed}", f"outputs/eval/retain-f{forget}-s{seed}",
            f"dataset/med_synthetic_forget{forget}.json", "stages/verify"} <= deps
    assert [out.def_path for out in stage.outs if out.metric] == ["outputs/eval/their-npo/metrics.json"]

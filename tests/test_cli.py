import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from stages import table
from stages.cli import main

STAGES = [stage.name for stage in table.STAGES]


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_help(stage):
    result = CliRunner().invoke(main, [stage, "--help"])
    assert result.exit_code == 0
    assert result.output.startswith("Usage:") and "--help" in result.output


@pytest.mark.parametrize("stage", STAGES)
def test_help_groups_every_option_once_each_with_help_and_one_spelling_and_a_runnable_example(stage):
    import click

    from stages.common.options import HELP_GROUPS

    command = main.commands[stage]
    names = [p.name for p in command.params]
    grouped = [name for heading in HELP_GROUPS for name in command.groups.get(heading, ())]
    assert sorted(grouped) == sorted(names), set(grouped) ^ set(names)  # each option in exactly one group
    context = click.Context(command, info_name=stage, parent=click.Context(main, info_name="unforgotten"))
    for param in command.params:
        assert isinstance(param, click.Option) and param.help and param.help.strip(), param.name
        has_default = param.default not in (None, False, (), click.core.UNSET) and not param.required
        assert not has_default or "default:" in param.get_help_record(context)[1], param.name
    output = CliRunner().invoke(main, [stage, "--help"], terminal_width=120).output
    headings = [line[:-1] for line in output.splitlines() if line and not line[0].isspace() and line.endswith(":")]
    assert headings == [h for h in HELP_GROUPS if h in command.groups] + ["Help"], headings
    assert "%%" not in output and "Other:" not in output
    assert not [word for word in output.split() if word.startswith("--") and "_" in word]
    underscored = [o for p in command.params for o in p.opts if o.startswith("--") and "_" in o]
    assert all(o.replace("_", "-") in output for o in underscored)  # the dash spelling is the one shown
    example = output.split("Example:")[1].replace("\\\n", " ").split()
    assert example[:2] == ["unforgotten", stage]
    command.make_context(stage, example[2:])  # the example is a valid command line (parsed, not run)


def test_an_underscore_alias_is_accepted_though_not_shown():
    command = main.commands["evaluate"]
    context = command.make_context("evaluate", ["--run_name", "x", "--forget_file", "f", "--retain-file", "r",
                                                "--output_dir", "o", "--max_new_tokens", "3"])
    assert (context.params["run_name"], context.params["max_new_tokens"]) == ("x", 3)


def test_help_imports_no_heavy_library():
    code = ("import sys; from stages.cli import main\n"
            "try:\n    main(['finetune', '--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'numpy', 'datasets') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


def test_the_stage_table_is_what_the_cli_makefile_dockerfile_dvc_and_params_use():
    """One stage list: the CLI's subcommands, the Dockerfile's build targets, the Makefile's images, the stages
    dvc.yaml runs and params.yaml's sections all agree with stages/table.py."""
    import re

    import yaml

    root = Path(__file__).resolve().parents[1]
    assert STAGES == ["generate", "prepare-medical", "prepare-wmdp", "prepare-tofu", "finetune", "unlearn",
                      "evaluate", "report", "verify"]
    assert sorted(main.commands) == sorted(STAGES)
    targets = re.findall(r"^FROM \S+ AS (\S+)$", (root / "docker/Dockerfile").read_text(), re.M)
    assert targets == ["base", *table.images()]
    made = subprocess.run(["make", "-s", "-C", str(root), "--eval", "print-images:\n\t@echo $(IMAGES)", "print-images"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert made == table.images()
    assert all(table.image_of(stage) in table.images() for stage in STAGES)
    commands = [stage["cmd"] if isinstance(stage.get("cmd"), str) else stage.get("foreach") and stage["do"]["cmd"]
                for stage in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].values()]
    run = {cmd.split()[1] for cmd in commands if cmd and cmd.startswith("unforgotten ")}
    assert run and run <= set(STAGES)
    params = yaml.safe_load((root / "params.yaml").read_text())
    # verify, tofu, tofu_verify: maps of models (run name or track: what to evaluate), not a stage's settings
    sections = {key for key, value in params.items() if isinstance(value, dict)
                and key not in ("verify", "tofu", "tofu_verify")}
    assert sections == set(table.sections())


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


def test_an_unexpected_error_is_one_sentence_and_debug_shows_the_traceback(tmp_path):
    """A real process with a fault no input check anticipates (the split function raises): one line naming the
    error and --debug, exit code 1, nothing written; with --debug (or UNFORGOTTEN_DEBUG=1) the traceback."""
    import os

    notes = tmp_path / "notes.jsonl"
    assert CliRunner().invoke(main, ["generate", "--n-record", "12", "--output", str(notes)]).exit_code == 0
    fault = ("import sys, stages.common.splits as s\n"
             "def broken(*args, **kwargs):\n    raise RuntimeError('disk on fire\\nsecond line')\n"
             "s.holdout_split = broken\n"
             "from stages.cli import main\nsys.argv[0] = 'unforgotten'\nmain()")
    args = ["prepare-medical", "-i", str(notes), "-o", str(tmp_path / "out")]
    for extra, env in (([], {}), (["--debug"], {}), ([], {"UNFORGOTTEN_DEBUG": "1"})):
        run = subprocess.run([sys.executable, "-c", fault, *extra, *args], capture_output=True, text=True,
                             env={**os.environ, **env})
        assert run.returncode == 1 and not (tmp_path / "out").exists()
        if not extra and not env:
            assert "Traceback" not in run.stderr
            (line,) = run.stderr.strip().splitlines()
            assert line == ("Error: RuntimeError: disk on fire (run `unforgotten --debug ...` or set "
                            "UNFORGOTTEN_DEBUG=1 for the traceback).")
        else:
            assert "Traceback" in run.stderr and "RuntimeError: disk on fire" in run.stderr


REQUIRED = {"finetune": ["--data-file", "d.json", "--output-dir", "o"],
            "unlearn": ["--forget-file", "f", "--retain-file", "r", "--output-dir", "o"],
            "evaluate": ["--run-name", "x", "--forget-file", "f", "--retain-file", "r", "--output-dir", "o"],
            "verify": ["--model", "m"]}


@pytest.mark.parametrize("stage", [s.name for s in table.STAGES])
def test_a_stage_config_is_frozen_typed_and_named_as_its_options(stage, monkeypatch):
    """One field per option, named as click names it (no renaming on the way in), click's converted values and
    defaults, frozen; the token read from the environment stays out of its repr (so out of any log); the stage's
    work is its module's run(config)."""
    import dataclasses
    import inspect
    import sys

    from stages.common.options import parse_config, stage_config

    monkeypatch.setenv("HF_TOKEN", "hf_secret_for_the_repr_test")
    command = main.commands[stage]
    names = [p.name for p in command.params if p.name != "help"]
    config = parse_config(command, REQUIRED.get(stage, []) + (["--seed", "7"] if "seed" in names else []))
    assert type(config) is stage_config(command)
    assert [f.name for f in dataclasses.fields(config)] == names
    for param in command.params:
        long = next((o for o in param.opts if o.startswith("--")), None)
        if long:  # the Python name is the long option's, dashes as underscores
            assert param.name == long[2:].replace("-", "_"), long
    if "seed" in names:
        assert config.seed == 7 and isinstance(config.seed, int)
    if "hf_token" in names:
        assert config.hf_token == "hf_secret_for_the_repr_test" and "hf_secret" not in repr(config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, names[0], None)
    work = sys.modules[command.callback.__module__].run
    assert list(inspect.signature(work).parameters) == ["config"]


def test_every_citation_of_the_metric_reference_names_one_of_its_sections():
    """Comments, docstrings, params and the README cite docs/metrics.md §X; each §X is a heading there, and no
    file cites a document the repository does not hold."""
    import re

    root = Path(__file__).resolve().parents[1]
    headings = set(re.findall(r"^## (§[0A-F])\b", (root / "docs/metrics.md").read_text(), re.M))
    assert headings == {"§0", "§A", "§B", "§C", "§D", "§E", "§F"}
    files = [*root.glob("stages/**/*.py"), *root.glob("tests/*.py"), *root.glob("bench/*.py"), *root.glob("profiles/*"),
             root / "params.yaml", root / "README.md", root / "dvc.yaml", root / "Makefile"]
    cited = set()
    for path in files:
        text = path.read_text()
        for citation in re.findall(r"docs/metrics\.md((?: §[0A-F](?:-§[A-F])?,?(?: and)?)+)", text):
            cited |= set(re.findall(r"§[0A-F]", citation))
        if path.name != "test_cli.py":
            assert not re.search(r"\b(VERIFY|SPEC|STYLE)\.md", text), path
    assert cited and cited <= headings


@pytest.mark.parametrize("name, message", [
    ("../outside", "a run name is letters, digits, '-' and '_'"),
    ("a.b", "a run name is letters, digits, '-' and '_'"),
    ("base", "is one of the pipeline's references"),
    ("retain-f50-s42", "is one of the pipeline's references")])
def test_verify_refuses_a_run_name_that_escapes_or_overwrites_a_reference(name, message, tmp_path, monkeypatch):
    from stages.common import hub

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded before the run name was checked")

    monkeypatch.setattr(hub, "download_model", no_download)
    (tmp_path / "params.yaml").write_text("forget_sets: ['50']\nseeds: [42]\n")
    result = CliRunner().invoke(main, ["verify", "--model", "their-lab/npo", "--name", name, "--params",
                                       str(tmp_path / "params.yaml")])
    assert result.exit_code == 2 and message in result.output, result.output


def test_verify_checks_the_references_before_it_downloads_a_hub_model(tmp_path, monkeypatch):
    from stages.common import hub

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded before the references were checked")

    monkeypatch.setattr(hub, "download_model", no_download)
    (tmp_path / "params.yaml").write_text("forget_sets: ['50']\nseeds: [42]\n")
    result = CliRunner().invoke(main, ["verify", "--model", "their-lab/npo", "--params", str(tmp_path / "params.yaml"),
                                       "--eval-dir", str(tmp_path / "none")])
    assert result.exit_code == 1, result.output
    assert "none/base: not found; verify needs the pipeline's reference" in result.output
    assert not (tmp_path / "none").exists()

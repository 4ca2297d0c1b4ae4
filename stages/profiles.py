"""Profiles: named sets of params.yaml values in profiles/<name>.yaml (same layout, only the keys that differ).
`make run PROFILE=<name>` runs one as a DVC experiment, `dvc exp run -S key=value ...`, so the
default profile's results stay in the cache and `dvc exp show` puts the two side by side.

    python -m stages.profiles run paper      # what `make run PROFILE=paper` does (extra args go to dvc)
    python -m stages.profiles show paper     # the -S overrides it would pass
    python -m stages.profiles check          # params.yaml's keys against the stages' options (make run does it)
    python -m stages.profiles training-args  # the shared training settings as options (make check-methods)
"""

import difflib
import json
import subprocess
import sys
from pathlib import Path

import yaml

from stages import table
from stages.common.io import InputError


def leaves(tree, prefix=""):
    """{'a': {'b': 1}} -> [('a.b', 1)]; lists and scalars are leaves."""
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from leaves(value, f"{path}.")
        else:
            yield path, value


def override_value(value):
    """A value in DVC's -S (Hydra override) syntax: strings quoted, lists bracketed."""
    if isinstance(value, list):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def overrides(profile_path, params_path="params.yaml"):
    """The profile's -S overrides; a key that params.yaml lacks is an error naming the closest valid key."""
    profile = yaml.safe_load(Path(profile_path).read_text()) or {}
    params = yaml.safe_load(Path(params_path).read_text())
    known = dict(leaves(params))
    result = []
    for key, value in leaves(profile):
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise InputError(f"{profile_path}: '{key}' is not a key of {params_path}{hint}.")
        result.append(f"{key}={override_value(value)}")
    return result


TOP_LEVEL = {"seed", "seeds", "base_model", "forget_sets", "reference_forget", "methods", "max_seq_length", "verify"}
# params.yaml section -> the stage commands whose options its keys are (`training` goes to all three).
SECTIONS = table.sections()
# Options that dvc.yaml fills from a shared key, so a stage's own section may not set them again: option -> key.
SHARED = {"with-notes": "training.with-notes", "with-probes": "training.with-probes",
          "seed": "seed", "base-model": "base_model"}
SHARED_BY = {"finetune": {"max-seq-length": "max_seq_length"}, "unlearn": {"max-seq-length": "max_seq_length"}}


# Options params.yaml never holds: a secret (it would be on a command line, in dvc.lock and in every log).
NEVER = {"hf-token"}
# evaluate options a TOFU track's stages set themselves (dvc.yaml, verify --tofu): a track may not set them again.
TOFU_SET = {"forget-file", "retain-file", "holdout-file", "output-dir", "run-name", "method", "forget-set", "seed",
            "base-model", "adapter", "reference", "oracle", "retain", "attacks", "no-attacks"}


def valid_keys():
    """Every key params.yaml may hold: the top-level ones and, per section, the long option names its commands
    all have, but those a shared key sets (a stage's own copy of a shared setting could disagree with it)."""
    from stages.cli import main as cli

    keys = set(TOP_LEVEL)
    for section, commands in SECTIONS.items():
        common = None
        for command in commands:
            options = {o[2:] for p in cli.commands[command].params for o in p.opts + p.secondary_opts
                       if o.startswith("--") and not o.startswith("--no-")}
            if section != "training":
                options -= {*SHARED, *SHARED_BY.get(command, {})}
            common = options if common is None else common & options
        keys |= {f"{section}.{o}" for o in common - NEVER}
    return keys


def shared_hint(key):
    """'finetune.with-probes' -> 'training.with-probes': where a setting stated per stage now lives, if shared."""
    section, _, option = key.partition(".")
    if section in SECTIONS and section != "training":
        return SHARED.get(option) or SHARED_BY.get(section, {}).get(option)
    return None


def check_verify(verify, params_path):
    """params.yaml's verify: a map (DVC's foreach needs one, empty included) of run names (verify.cli's rule) to
    models, each a directory or hub id without spaces or quotes (dvc.yaml puts it on verify's command line)."""
    import re

    from stages.verify.cli import REFERENCE, RUN_NAME

    if not isinstance(verify, dict):
        raise InputError(f"{params_path}: verify: expected a map of run name -> model (a directory or a hub id), "
                         f"{{}} for none.")
    for name, model in verify.items():
        if not isinstance(name, str) or not re.fullmatch(RUN_NAME, name) or re.fullmatch(REFERENCE, name):
            raise InputError(f"{params_path}: verify: {name!r} is not a run name (letters, digits, '-' and '_', "
                             f"not base, oracle-s<seed> or retain-f<NN>-s<seed>).")
        if not isinstance(model, str) or not re.fullmatch(r"[^\s'\"]+", model):
            raise InputError(f"{params_path}: verify: {name}: {model!r} is not a directory or hub id "
                             f"(no spaces or quotes).")


TOFU_MODELS = ("base", "oracle", "retain")


def check_tofu(params, params_path):
    """params.yaml's TOFU track (tofu: track -> its split, three reference models and its evaluate settings;
    tofu_verify: run name -> its track and model): maps, as DVC's foreach needs, with every key dvc.yaml reads."""
    import re

    from stages.cli import main as cli
    from stages.verify.cli import REFERENCE, RUN_NAME

    def model_problem(model):
        return not isinstance(model, str) or not re.fullmatch(r"[^\s'\"]+", model)

    tracks, runs = params.get("tofu", {}), params.get("tofu_verify", {})
    if not isinstance(tracks, dict) or not isinstance(runs, dict):
        raise InputError(f"{params_path}: tofu and tofu_verify: expected maps ({{}} for none).")
    options = {o[2:] for p in cli.commands["evaluate"].params for o in p.opts if o.startswith("--")} - NEVER - TOFU_SET
    for name, track in tracks.items():
        where = f"{params_path}: tofu: {name}"
        if not isinstance(name, str) or not re.fullmatch(RUN_NAME, name):
            raise InputError(f"{where}: a track name is letters, digits, '-' and '_' (it names a directory).")
        if not isinstance(track, dict) or set(track) != {"split", *TOFU_MODELS, "evaluate"}:
            raise InputError(f"{where}: expected split, {', '.join(TOFU_MODELS)} and evaluate (a map, {{}} for "
                             "none), no other key.")
        if track["split"] not in ("01", "05", "10"):  # a string: YAML reads 05 as the number 5
            raise InputError(f"{where}: split: {track['split']!r} is not one of TOFU's forget splits 01, 05, 10 "
                             "(quote it: \"10\").")
        for role in TOFU_MODELS:
            if model_problem(track[role]):
                raise InputError(f"{where}: {role}: {track[role]!r} is not a directory or hub id.")
        unknown = sorted(set(track["evaluate"] or {}) - options) if isinstance(track["evaluate"], dict) else ["?"]
        if unknown:
            raise InputError(f"{where}: evaluate: {unknown[0]!r} is not an option of evaluate a track may set "
                             "(the track's stages set the files, models and run names; secrets come from the "
                             "environment).")
    for name, entry in runs.items():
        where = f"{params_path}: tofu_verify: {name}"
        if not isinstance(name, str) or not re.fullmatch(RUN_NAME, name) or re.fullmatch(REFERENCE, name):
            raise InputError(f"{where}: not a run name (letters, digits, '-' and '_', not base, oracle or retain).")
        if not isinstance(entry, dict) or set(entry) != {"track", "model"}:
            raise InputError(f"{where}: expected track and model, no other key.")
        if entry["track"] not in tracks:
            raise InputError(f"{where}: track {entry['track']!r} is not a track of tofu "
                             f"({', '.join(map(str, tracks)) or 'none'}).")
        if model_problem(entry["model"]):
            raise InputError(f"{where}: model: {entry['model']!r} is not a directory or hub id.")


def check_params(params_path="params.yaml"):
    """params.yaml's keys are known (a typo names the closest valid key), its methods exist and its forget sets
    are among prepare_medical's ratios."""
    from stages.common.params import ratio_tag
    from stages.unlearn.methods import available

    params = yaml.safe_load(Path(params_path).read_text()) or {}
    known = valid_keys()
    check_verify(params.get("verify", {}), params_path)
    check_tofu(params, params_path)
    for key, _ in leaves({k: v for k, v in params.items() if k not in ("verify", "tofu", "tofu_verify")}):
        if key not in known:
            shared = shared_hint(key)
            if shared:
                raise InputError(f"{params_path}: '{key}' is set once for every stage, as '{shared}'.")
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise InputError(f"{params_path}: '{key}' is not a known key{hint}.")
    for method in params.get("methods", []):
        if method not in available():
            raise InputError(f"{params_path}: methods: '{method}' is not a method ({', '.join(available())}).")
    tags = {ratio_tag(r) for r in (params.get("prepare_medical") or {}).get("forget-ratios", [])}
    for name in ("forget_sets", "reference_forget"):
        for tag in params.get(name, []) if isinstance(params.get(name), list) else [params.get(name)]:
            if tag is not None and str(tag) not in tags:
                raise InputError(f"{params_path}: {name}: '{tag}' is not a forget set of prepare_medical's "
                                 f"forget-ratios ({', '.join(sorted(tags))}).")


def training_args(params_path="params.yaml"):
    """params.yaml's shared training settings as the options dvc.yaml passes finetune and unlearn: the `training`
    section's flags (--with-x / --no-with-x) and --max-seq-length."""
    params = yaml.safe_load(Path(params_path).read_text()) or {}
    flags = [f"--{key}" if value else f"--no-{key}" for key, value in (params.get("training") or {}).items()]
    return [*flags, "--max-seq-length", str(params["max_seq_length"])]


def main(argv):
    if argv[:1] == ["training-args"]:
        print(" ".join(training_args(*argv[1:2])))
        return
    if argv[:1] == ["check"]:
        path = argv[1] if len(argv) > 1 else "params.yaml"
        try:
            check_params(path)
        except InputError as error:
            sys.exit(f"Error: {error}")
        return
    action, name, extra = (argv[0], argv[1], argv[2:]) if len(argv) >= 2 else (None, None, [])
    if action not in ("run", "show"):
        sys.exit("usage: python -m stages.profiles run|show <profile name> | check [params.yaml]")
    path = Path("profiles") / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in Path("profiles").glob("*.yaml"))
        sys.exit(f"Error: no profile {name!r} (profiles/{name}.yaml); profiles: default, {', '.join(names)}.")
    try:
        sets = overrides(path)
    except InputError as error:
        sys.exit(f"Error: {error}")
    if action == "show":
        print("\n".join(sets))
        return
    command = [str(Path(sys.executable).parent / "dvc"), "exp", "run", *extra]
    for item in sets:
        command += ["-S", item]
    sys.exit(subprocess.run(command).returncode)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Profiles: named sets of params.yaml values in profiles/<name>.yaml (same layout, only the keys that differ).
`make run PROFILE=<name>` runs one as a DVC experiment, `dvc exp run -S key=value ...`, so the
default profile's results stay in the cache and `dvc exp show` puts the two side by side.

    python -m stages.profiles run paper      # what `make run PROFILE=paper` does (extra args go to dvc)
    python -m stages.profiles show paper     # the -S overrides it would pass
"""

import difflib
import json
import subprocess
import sys
from pathlib import Path

import yaml

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


def main(argv):
    action, name, extra = (argv[0], argv[1], argv[2:]) if len(argv) >= 2 else (None, None, [])
    if action not in ("run", "show"):
        sys.exit("usage: python -m stages.profiles run|show <profile name>")
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

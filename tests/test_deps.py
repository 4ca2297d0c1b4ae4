"""dvc.yaml's code dependencies are the code each stage runs: its package and every module outside it that the
package imports, directly or through other modules (tests/test_deps.py derives them from the imports). A change to
a module reruns only the stages that import it: a plot's code reruns the report, not the fine-tunes."""

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def module_file(name):
    """stages.common.io -> stages/common/io.py, a package -> its __init__.py; None where no such module is."""
    path = ROOT.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return path / "__init__.py" if (path / "__init__.py").is_file() else None


def docstring_only(path):
    """A module that runs nothing (a package's __init__.py holding its docstring): no behaviour to depend on."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def imported_files(path):
    """The project's modules one file imports, at the top or inside a function (the stages import lazily)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: a relative import; the closure reads absolute imports only"
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        found |= {target for name in names
                  if name.split(".")[0] == "stages" and (target := module_file(name)) is not None}
    return found


def code_deps(package):
    """A stage's package directory and the project's modules outside it that it reaches, as dvc.yaml paths."""
    package = ROOT / package
    todo, seen = list(package.rglob("*.py")), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += imported_files(path)
    outside = {p for p in seen if package not in p.parents and not docstring_only(p)}
    # Inside its package a stage may pick a module by name (stages/unlearn/methods: the whole directory is a
    # dependency); outside it, a module imported by name would be a dependency this closure cannot see.
    assert not [p for p in outside if "import_module(" in p.read_text()], outside
    # (The `unforgotten` entry point, stages/cli.py and table.py, only dispatches to a stage's command by name; it
    # runs no stage's work, so no stage depends on it.)
    # A module of another stage's package stands for that whole package, data files included (verify runs
    # evaluate, which reads stages/evaluate/world_facts.json); stages/common's modules count one by one.
    def dep(path):
        parts = path.relative_to(ROOT).parts
        return "/".join(parts[:2]) if len(parts) > 2 and parts[1] != "common" else "/".join(parts)

    return {str(package.relative_to(ROOT))} | {dep(p) for p in outside}


def stage_code(stage):
    """The stage's `stages/...` dependencies in dvc.yaml, and the package its command runs."""
    command = " ".join(stage["cmd"].split()).split()
    assert command[0] == "unforgotten", stage["cmd"]
    return {d for d in stage["deps"] if d.startswith("stages/")}, "stages/" + command[1].replace("-", "_")


def test_every_stage_depends_on_exactly_the_code_it_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        stage = stage.get("do", stage)
        listed, package = stage_code(stage)
        expected = code_deps(package)
        assert listed == expected, (f"dvc.yaml stage {name}: code deps should be {sorted(expected)} (from the "
                                    f"imports of {package}), not {sorted(listed)}")


def test_the_import_closure_follows_lazy_imports_through_other_modules():
    deps = code_deps("stages/finetune")
    # finetune/cli.py imports stages.common.models inside its function; models imports io at the top
    assert {"stages/finetune", "stages/common/models.py", "stages/common/io.py"} <= deps
    assert "stages/common/plots.py" not in deps and "stages/evaluate" not in deps
    assert "stages/common/plots.py" in code_deps("stages/report")

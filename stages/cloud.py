"""Many machines, one pipeline: the DAG's stages in waves, each stage a job in its own clone, merged through DVC's
run-cache on the remote (never by copying dvc.lock).

A job (`python -m stages.cloud job <stage>`, what docker/cloud/run-stage.sh runs on a cloud GPU) reproduces its
stage with `dvc repro --pull`: every upstream stage, finished by an earlier wave and pushed with its run-cache
entry, is restored from the run-cache (its outputs fetched, nothing recomputed), then the stage itself runs, and
`dvc push --run-cache` sends its outputs and its run-cache entry to the remote. Back home, `dvc repro --pull` in the
launching checkout restores every stage the same way and writes dvc.lock, computing nothing but the stages DVC's
run-cache cannot hold (home_only: the report, seconds on a CPU). (`dvc pull --run-cache`
alone cannot: it checks outputs out by dvc.lock, which has no entry for a stage that ran elsewhere.)
"""

import re
import subprocess
import sys


def home_only(stage):
    """A stage DVC's run-cache cannot hold: one with an uncached output that is neither a metric nor a plot (DVC
    saves no run-cache entry for it). It runs at home, after the merge (the report: seconds on a CPU)."""
    return any(not out.use_cache and not (out.is_metric or out.is_plot) for out in stage.outs)


def plan(repo_dir=".", targets=None):
    """The pipeline's stages (dvc.yaml's, by name) as {"waves": [[stage, ...], ...], "home": [stage, ...]}: each
    wave's stages depend only on earlier waves', so a wave's jobs run at once; the home stages (home_only, and
    whatever depends on one) run in the launching checkout after the waves. The DAG is DVC's own
    (dvc.repo.Repo.index.graph), for `targets` and what they need, or the whole pipeline."""
    import networkx as nx
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(repo_dir) as repo:
        graph = repo.index.graph  # an edge from each stage to a stage it depends on
        if targets:
            wanted = set()
            for target in targets:
                (stage,) = [s for s in graph.nodes if isinstance(s, PipelineStage) and s.name == target] or [None]
                if stage is None:
                    raise SystemExit(f"Error: dvc.yaml has no stage {target!r}.")
                wanted |= {stage} | nx.descendants(graph, stage)
            graph = graph.subgraph(wanted)
        # .dvc files (data.dvc) are data, not jobs: a stage that reads one can run in the first wave
        graph = graph.subgraph([s for s in graph.nodes if isinstance(s, PipelineStage)])
        home = {s for s in graph.nodes if home_only(s)}
        home |= {s for s in graph.nodes if home & nx.descendants(graph, s)}
        remote = graph.subgraph([s for s in graph.nodes if s not in home])
        layers = [sorted(s.name for s in layer) for layer in nx.topological_generations(remote.reverse(copy=True))]
        order = [s.name for s in nx.topological_sort(graph.reverse(copy=True)) if s in home]
    return {"waves": layers, "home": order}


def dvc(*args, cwd="."):
    """dvc, as this interpreter's environment has it; its output passed through, and returned."""
    from pathlib import Path

    executable = Path(sys.executable).with_name("dvc")
    result = subprocess.run([str(executable) if executable.exists() else "dvc", *args], cwd=cwd,
                            capture_output=True, text=True)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    if result.returncode:
        raise SystemExit(f"Error: `dvc {' '.join(args)}` failed (exit {result.returncode}).")
    return result.stdout + result.stderr


def job(stage, cwd="."):
    """One stage in this clone: its inputs restored from the remote's run-cache, the stage run, its outputs and
    run-cache entry pushed. An upstream stage that had to run here means an earlier wave did not finish (or pushed
    nothing): that is an error, not a silent recomputation."""
    out = dvc("repro", "--pull", stage, cwd=cwd)
    ran = re.findall(r"^Running stage '([^']+)'", out, re.M)
    upstream = [s for s in ran if s != stage]
    if upstream:
        raise SystemExit(f"Error: {', '.join(upstream)} ran in the job of {stage}: not in the remote's run-cache "
                         "(run the waves in order, each after the one before has pushed).")
    push_run_cache(cwd)
    return ran


def push_run_cache(cwd="."):
    """`dvc push --run-cache`, and the objects of its entries' `cache: false` outputs, which it leaves behind (DVC
    3.x pushes the entries and the stages' cached outputs only): the numbers in git (metrics.json, the unlearning
    trajectories) are outputs of that kind, and a stage whose entry names an object the remote lacks cannot be
    restored from it."""
    from dvc.repo import Repo

    dvc("push", cwd=cwd)
    with Repo(cwd) as repo:
        entries = repo.stage_cache.push(None)  # (key, value) of every run-cache entry of this clone, sent
        objects = set().union(*repo.stage_cache.get_used_objs(entries).values())
        result = repo.cloud.push(objects)
    if result.failed:
        raise SystemExit(f"Error: {len(result.failed)} objects of the run-cache's outputs did not reach the remote.")


def main(argv=None):
    import click

    @click.group()
    def cli():
        """The pipeline on many machines (the launcher's parts)."""

    @cli.command("waves")
    @click.argument("targets", nargs=-1)
    def show_waves(targets):
        """Print the DAG's waves, one line of stage names each, then the stages that run at home."""
        planned = plan(".", targets or None)
        for layer in planned["waves"]:
            click.echo(" ".join(layer))
        click.echo("home: " + " ".join(planned["home"]))

    @cli.command("job")
    @click.argument("stage")
    def run_job(stage):
        """Run one stage as a job: restore its inputs from the run-cache, run it, push it with its run-cache entry."""
        job(stage)

    cli(args=argv)


if __name__ == "__main__":
    main()

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
from pathlib import Path


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
    """dvc, as this interpreter's environment has it; its output streamed through as it comes (a job's log shows
    its stage's progress), and returned."""
    executable = Path(sys.executable).with_name("dvc")
    process = subprocess.Popen([str(executable) if executable.exists() else "dvc", *args], cwd=cwd, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        lines.append(line)
    if process.wait():
        raise SystemExit(f"Error: `dvc {' '.join(args)}` failed (exit {process.returncode}).")
    return "".join(lines)


def restore_upstream(stage_name, cwd="."):
    """Every stage `stage_name` depends on, restored from the remote's run-cache (its outputs fetched and checked
    out, nothing run), in the DAG's order; the data files (data.dvc) pulled. Returns the stages the run-cache does
    not hold: an earlier wave that did not finish or pushed nothing."""
    import networkx as nx
    from dvc.repo import Repo
    from dvc.stage import PipelineStage
    from dvc.stage.cache import RunCacheNotFoundError

    with Repo(cwd) as repo:
        graph = repo.index.graph
        (target,) = [s for s in graph.nodes if isinstance(s, PipelineStage) and s.name == stage_name] or [None]
        if target is None:
            raise SystemExit(f"Error: dvc.yaml has no stage {stage_name!r}.")
        upstream = list(reversed(list(nx.topological_sort(graph.subgraph(nx.descendants(graph, target))))))
        data = [s.relpath for s in upstream if not isinstance(s, PipelineStage)]
        repo.stage_cache.pull(None)  # the remote's run-cache entries
    if data:
        dvc("pull", *data, cwd=cwd)
    missing = []
    with Repo(cwd) as repo, repo.lock:
        stages = {s.name: s for s in repo.index.graph.nodes if isinstance(s, PipelineStage)}
        for name in (s.name for s in upstream if isinstance(s, PipelineStage)):
            try:
                repo.stage_cache.restore(stages[name], pull=True)
            except RunCacheNotFoundError:
                missing.append(name)
                break  # what follows it cannot be restored either
    return missing


def job(stage, cwd=".", profile=None):
    """One stage in its own checkout: its inputs restored from the remote's run-cache (restore_upstream), then the
    stage (`dvc repro --pull --single-item`: restored too, if a relaunch finds it done, else run), then its outputs
    and run-cache entry pushed. An upstream stage the run-cache lacks is an error before anything runs, not a
    silent recomputation. With a profile, params.yaml first takes its values (the checkout is the job's own)."""
    if profile and profile != "default":
        import yaml

        params = profile_params(profile, Path(cwd) / "params.yaml", Path(cwd) / "profiles")
        (Path(cwd) / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    missing = restore_upstream(stage, cwd)
    if missing:
        raise SystemExit(f"Error: {', '.join(missing)}, which {stage} needs, is not in the remote's run-cache (run "
                         "the waves in order, each after the one before has pushed).")
    out = dvc("repro", "--pull", "--single-item", stage, cwd=cwd)
    push_run_cache(cwd)
    return re.findall(r"^Running stage '([^']+)'", out, re.M)


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


# --- the launcher: SkyPilot jobs, one per stage, wave after wave -------------------------------------------------

# Shapes of the models the profiles name (parameters, hidden size, layers); another model: parameters from a
# "<N>B" in its name, else no estimate.
MODELS = {"embedded": (1.35e8, 576, 30), "meta-llama/Llama-3.1-8B-Instruct": (8.03e9, 4096, 32),
          "meta-llama/Llama-3.2-1B-Instruct": (1.24e9, 2048, 16)}
# Stated assumptions, used until bench/results/gpu.json has this GPU's measured numbers: bf16 dense peak FLOP/s,
# and the fraction of it a stage reaches (training: LoRA fine-tuning, 6 N FLOPs a token; measuring: batched
# scoring and generation, 2 N a token, memory-bound).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "A100-80GB": 312e12, "L4": 121e12}
GPU_MEMORY_GIB = {"H100": 80, "H200": 141, "A100": 40, "A100-80GB": 80, "L4": 24}
MFU = {"train": 0.35, "measure": 0.10}
GPU_RESULTS = Path("bench/results/gpu.json")  # `make gpu-check`: the 8B LoRA MFU measured on a GPU ("ours")


def train_mfu():
    """The training MFU the estimate uses: the one `make gpu-check` measured where bench/results/gpu.json exists,
    else the stated assumption. Returns (mfu, where it comes from)."""
    import json

    if GPU_RESULTS.is_file():
        measured = json.loads(GPU_RESULTS.read_text()).get("ours")
        if measured:
            return float(measured), f"measured ({GPU_RESULTS})"
    return MFU["train"], f"assumed (no {GPU_RESULTS})"
CHECKPOINTS = "/checkpoints"  # the bucket of finetune's checkpoints, mounted on every managed job's machine


def profile_params(profile=None, params_path="params.yaml", profiles_dir="profiles"):
    """params.yaml with a profile's values on top (profiles/<name>.yaml; lists and values replace, maps merge):
    the values `dvc exp run -S` gives the experiment at home, so the run-cache keys of jobs and home agree."""
    import yaml

    params = yaml.safe_load(Path(params_path).read_text(encoding="utf-8"))
    if profile and profile != "default":
        from stages.profiles import overrides

        overrides(Path(profiles_dir) / f"{profile}.yaml", params_path)  # a key params.yaml lacks: an error here
        def merge(into, values):
            for key, value in values.items():
                if isinstance(value, dict) and isinstance(into.get(key), dict):
                    merge(into[key], value)
                else:
                    into[key] = value
        merge(params, yaml.safe_load((Path(profiles_dir) / f"{profile}.yaml").read_text(encoding="utf-8")) or {})
    return params


def profile_plan(profile=None, repo_dir="."):
    """plan() of the pipeline as a profile expands it: dvc.yaml with the profile's params, in a scratch copy."""
    import shutil
    import tempfile

    import yaml

    root = Path(repo_dir)
    with tempfile.TemporaryDirectory(prefix="unforgotten-plan-") as scratch:
        scratch = Path(scratch)
        subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=scratch, check=True)
        for name in ("dvc.yaml", "data.dvc"):
            shutil.copy(root / name, scratch / name)
        params = profile_params(profile, root / "params.yaml", root / "profiles") if profile else None
        if params is None:
            shutil.copy(root / "params.yaml", scratch / "params.yaml")
        else:
            (scratch / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        from stages.profiles import check_params

        check_params(scratch / "params.yaml")  # as `make run` checks it, before any machine is paid for
        return plan(scratch), yaml.safe_load((scratch / "params.yaml").read_text())


def estimate(stage, params, gpu="H100"):
    """GPU-hours and peak GPU memory of one stage, from the model's size, the stage's token count and the stated
    throughput assumptions (MFU of PEAK_FLOPS); None where the model's size is unknown. Rough by design: it is
    there to say whether a run costs ten GPU-hours or a thousand before any is paid."""
    if not uses_gpu(stage):
        return {"gpu_hours": 0.0, "peak_gib": 0.0, "basis": "no model: a CPU job"}
    if "tofu" in stage:  # the TOFU track's models and sets are not the profile's
        return None
    model = params.get("base_model", "embedded")
    shape = MODELS.get(model)
    if shape is None:
        size = re.search(r"(\d+(?:\.\d+)?)[bB]\b", model)
        shape = (float(size.group(1)) * 1e9, None, None) if size else None
    if shape is None:
        return None
    n, hidden, layers = shape
    kind, _, item = stage.partition("@")
    seq = params.get("max_seq_length", 256)
    records = params["generate"]["n-record"] * (1 - params["prepare_medical"]["holdout-ratio"])
    training = params.get("training", {})
    pairs = int(bool(training.get("with-notes"))) + len(params["prepare_medical"]["probe-facts"]) * int(
        bool(training.get("with-probes", True)))
    evaluate, attacks = params.get("evaluate", {}), params.get("attacks", {})
    if kind.startswith("finetune"):
        if kind == "finetune-retain":  # the full set without the forget set
            records *= 1 - float(item.split("-")[0]) / 100
        tokens, flops, batch = records * pairs * seq * params["finetune"]["num-epochs"], 6, params["finetune"][
            "batch-size"]
    elif kind == "unlearn":
        unlearn = params["unlearn"]
        tokens, flops, batch = 2 * unlearn["steps"] * unlearn["samples-per-step"] * seq, 6, unlearn["batch-size"]
    elif kind.startswith(("evaluate", "verify")):
        forget = max((float(f) / 100 for f in params.get("forget_sets", ["10"])), default=0.1) * records
        probes = len(params["prepare_medical"]["probe-facts"]) * (forget + 2 * evaluate.get("retain-samples", 16))
        answers = evaluate.get("answer-tokens", 16) * (1 + attacks.get("leak-samples", 16))
        tokens = probes * (seq + answers)
        if "@" in stage and not kind.endswith("oracle"):  # the retain model and the unlearned: the attacks
            steps = max(attacks.get("relearn-steps", [0]))
            tokens += 3 * (2 * steps * attacks.get("relearn-batch-size", 4) * seq * 3 + probes * seq)
        flops, batch = 2, evaluate.get("batch-size", 16)
    else:
        return {"gpu_hours": 0.0, "peak_gib": 0.0, "basis": "no model: a CPU job"}
    mfu = train_mfu()[0] if flops == 6 else MFU["measure"]
    rate = mfu * PEAK_FLOPS.get(gpu, PEAK_FLOPS["H100"]) / (flops * n)
    weights = 2 * n  # bf16
    activations = batch * seq * (hidden or 4096) * (layers or 32) * 2 * 16 if flops == 6 else batch * seq * (
        hidden or 4096) * 2 * 8
    return {"gpu_hours": tokens / rate / 3600, "peak_gib": (weights + activations) * 1.1 / 2**30,
            "basis": f"{tokens:.3g} tokens at {rate:.3g} tokens/s ({flops} N FLOPs a token, MFU {mfu:.3g} of {gpu})"}


def uses_gpu(stage):
    return stage.partition("@")[0].startswith(("finetune", "unlearn", "evaluate", "verify"))


def slug(stage):
    return re.sub(r"[^a-z0-9-]+", "-", stage.lower()).strip("-")


SECRETS = ("HF_TOKEN", "TINKER_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def task(stage, gpu="H100", managed=False, profile=None, bucket=None, registry="", secrets=()):
    """The SkyPilot task of one job: its stage in the workdir the launcher syncs (the launching checkout), one GPU,
    the secrets by name from the launching shell, docker/cloud/run-stage.sh as its command. A managed job runs on
    a spot machine SkyPilot replaces when it is preempted; with a bucket, finetune keeps its checkpoints there
    (MOUNT_CACHED at CHECKPOINTS, UNFORGOTTEN_CHECKPOINT_ROOT), and the replacement resumes from them. The stage
    images keep the hub's downloads in a volume of the machine (/cache): a cluster's jobs download a model once."""
    import os

    envs = {"STAGE": stage, "PROFILE": profile or "", "REGISTRY": registry,
            # the committed remote (`make remote`) serves unless the launching shell names another
            "DVC_REMOTE_URL": os.environ.get("DVC_REMOTE_URL", ""),
            "DVC_REMOTE_ENDPOINT": os.environ.get("DVC_REMOTE_ENDPOINT", "")}
    # the data stages load no model: a CPU machine (on a GPU cluster's queue, a job that takes no GPU)
    resources = {"accelerators": f"{gpu}:1"} if uses_gpu(stage) else {"cpus": "4+"}
    spec = {"name": f"unforgotten-{slug(stage)}", "workdir": ".", "resources": {**resources, "disk_size": 256},
            # by name only: each value comes from the launching shell through `--secret NAME` (sky_commands)
            "envs": envs, "secrets": {name: None for name in secrets},
            "run": 'bash docker/cloud/run-stage.sh "$STAGE"'}
    if managed:
        # preemption recovery; a failing stage is not restarted (its error would repeat on a paid machine)
        spec["resources"].update({"use_spot": True, "job_recovery": {"strategy": "EAGER_NEXT_REGION"}})
        if bucket and stage.startswith("finetune"):
            spec["file_mounts"] = {CHECKPOINTS: {"source": bucket, "mode": "MOUNT_CACHED"}}
            envs["UNFORGOTTEN_CHECKPOINT_ROOT"] = CHECKPOINTS
    return spec


def write_tasks(planned, out_dir, **options):
    """One task file per job of every wave under out_dir (wave-NN/<stage>.sky.yaml); their paths by wave."""
    import yaml

    paths = []
    for number, layer in enumerate(planned["waves"], start=1):
        wave = Path(out_dir) / f"wave-{number:02d}"
        wave.mkdir(parents=True, exist_ok=True)
        paths.append([])
        for stage in layer:
            path = wave / f"{slug(stage)}.sky.yaml"
            path.write_text(yaml.safe_dump(task(stage, **options), sort_keys=False))
            paths[-1].append(path)
    return paths


def sky_commands(paths, cluster=None, secrets=()):
    """The `sky` command lines of each wave: on a cluster's job queue (`sky exec`, one GPU per job, SkyPilot sets
    the job's CUDA_VISIBLE_DEVICES) or as managed jobs (`sky jobs launch`); detached, then waited for. Each secret
    by name (`--secret NAME`: SkyPilot reads its value from this process's environment)."""
    flags = [flag for name in secrets for flag in ("--secret", name)]
    waves_ = []
    for layer in paths:
        if cluster:
            waves_.append([["sky", "exec", cluster, str(p), *flags, "--detach-run"] for p in layer])
        else:
            waves_.append([["sky", "jobs", "launch", str(p), "--name", p.name.removesuffix(".sky.yaml"), *flags,
                            "--yes", "--detach-run"] for p in layer])
    return waves_


def wait(command, cluster):
    """Run one `sky` job command detached and return a waiter that blocks until the job ends and says whether it
    succeeded: `sky logs <cluster> <id>` follows a cluster job, `sky jobs logs --name` a managed one."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"Error: `{' '.join(command)}` failed: {result.stderr.strip()[-500:]}")
    # what SkyPilot prints (sky/utils/ux_utils.py): "Job ID: N" for a cluster job, "Managed Job ID: N" for a managed
    found = re.search(r"^Job ID: (\d+)" if cluster else r"^Managed Job ID: (\d+)", result.stdout + result.stderr,
                      re.M | re.I)
    if not found:
        raise SystemExit(f"Error: `{' '.join(command)}` named no job id.")
    if cluster:  # follow the log to the end, then the job's status as the exit code
        follow, status = ["sky", "logs", cluster, found.group(1)], ["sky", "logs", cluster, found.group(1), "--status"]
        return lambda: subprocess.run(follow).returncode == 0 and subprocess.run(status).returncode == 0
    follow = ["sky", "jobs", "logs", found.group(1)]  # follows to the end; its exit code is the job's status
    return lambda: subprocess.run(follow).returncode == 0


def launch(profile=None, cluster=None, gpu="H100", bucket=None, registry=None, tasks_dir="outputs/cloud",
           dry_run=False, echo=print):
    """`make cloud`: the waves as SkyPilot jobs, each wave after the one before has succeeded, then the merge at
    home (`dvc repro --pull`, or for a profile its experiment with --pull). With dry_run: the waves, the jobs and
    the bill's estimate, and the task files written, nothing launched."""
    import os

    registry = os.environ.get("REGISTRY", "") if registry is None else registry
    if not registry and not dry_run:
        raise SystemExit("Error: give --registry (where `make push REGISTRY=...` put the stage images): a cloud "
                         "machine has no local image.")
    secrets = [name for name in SECRETS if os.environ.get(name)]
    planned, params = profile_plan(profile)
    paths = write_tasks(planned, tasks_dir, gpu=gpu, managed=cluster is None, profile=profile, bucket=bucket,
                        registry=registry, secrets=secrets)
    total, peak = 0.0, 0.0
    echo(f"{sum(map(len, planned['waves']))} jobs in {len(planned['waves'])} waves on {gpu} "
         f"({'cluster ' + cluster + ' job queue' if cluster else 'managed spot jobs'}); task files in {tasks_dir}")
    for number, layer in enumerate(planned["waves"], start=1):
        echo(f"wave {number}: {len(layer)} jobs")
        for stage in layer:
            guess = estimate(stage, params, gpu)
            if guess is None:
                echo(f"  {stage}: no estimate (a TOFU track's stage, or a model of unknown size)")
                continue
            total, peak = total + guess["gpu_hours"], max(peak, guess["peak_gib"])
            echo(f"  {stage}: {guess['gpu_hours']:.2f} GPU-h, peak {guess['peak_gib']:.1f} GiB ({guess['basis']})")
    echo(f"at home after the waves: {' '.join(planned['home']) or 'nothing'}")
    fits = "fits" if peak <= GPU_MEMORY_GIB.get(gpu, 80) else "does NOT fit"
    mfu, source = train_mfu()
    echo(f"estimate: {total:.1f} GPU-hours, peak {peak:.1f} GiB ({fits} one {gpu}); training MFU {mfu:.3g} {source}, "
         f"measuring MFU {MFU['measure']} assumed, of {PEAK_FLOPS.get(gpu, PEAK_FLOPS['H100']):.3g} FLOP/s bf16 peak; "
         "bf16 weights")
    if dry_run:
        return planned
    for number, commands in enumerate(sky_commands(paths, cluster, secrets), start=1):
        waiters = [(command, wait(command, cluster)) for command in commands]
        failed = [command for command, done in waiters if not done()]
        if failed:
            raise SystemExit(f"Error: wave {number}: {len(failed)} jobs failed (first: {' '.join(failed[0])}); the "
                             "finished ones are on the remote, and a relaunch restores them from its run-cache.")
        echo(f"wave {number}: {len(commands)} jobs done")
    home = ([sys.executable, "-m", "stages.profiles", "run", profile, "--pull"] if profile and profile != "default"
            else [str(Path(sys.executable).with_name("dvc")), "repro", "--pull"])
    echo("merge: " + " ".join(home))
    subprocess.run(home, check=True)
    return planned


def main(argv=None):
    import click

    @click.group()
    def cli():
        """The pipeline on many machines: SkyPilot jobs in waves, merged through DVC's run-cache."""

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
    @click.option("--profile", default=None, help="profiles/<name>.yaml on top of params.yaml, as the launch's.")
    def run_job(stage, profile):
        """Run one stage as a job: restore its inputs from the run-cache, run it, push it with its run-cache entry."""
        job(stage, profile=profile)

    @cli.command("launch")
    @click.option("--profile", default=None, help="profiles/<name>.yaml on top of params.yaml [default: none].")
    @click.option("--cluster", default=None,
                  help="A SkyPilot cluster (e.g. 8 GPUs on one node) whose job queue runs the jobs, one GPU each; "
                       "without it every job is a managed spot job.")
    @click.option("--gpu", default="H100", show_default=True, help="The accelerator of each job (SkyPilot's name).")
    @click.option("--bucket", default=None,
                  help="A bucket (s3://..., gs://...) for finetune's checkpoints on managed jobs: a preempted job's "
                       "replacement resumes from them.")
    @click.option("--registry", default=None,
                  help="Where the stage images are (`make push REGISTRY=...`) [default: $REGISTRY].")
    @click.option("--tasks-dir", default="outputs/cloud", show_default=True, help="Where the task files go.")
    @click.option("--dry-run", is_flag=True, help="The waves, jobs and estimate; write the task files, launch "
                                                   "nothing.")
    def run_launch(**options):
        """Launch the pipeline's stages as SkyPilot jobs, wave by wave, then merge them here."""
        launch(**options, echo=click.echo)

    cli(args=argv)


if __name__ == "__main__":
    main()

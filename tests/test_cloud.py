"""The pipeline on many machines, with real processes and no cloud: worker clones at the launching commit each run
one stage of the micro profile as a job (`python -m stages.cloud job`: inputs from the run-cache, the stage, a push
with --run-cache) against the SeaweedFS remote, a wave's jobs at once; the coordinator's `dvc repro --pull` then
recomputes nothing and writes the dvc.lock of a serial run."""

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from tests.micro import BIN, ROOT, commit, dvc, git, make, make_micro_repo, run
from tests.test_remote import s3  # noqa: F401 (the SeaweedFS server fixture)

pytestmark = pytest.mark.pipeline


def lock_stages(repo):
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"]


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory, tiny_model_dir, s3):  # noqa: F811
    """The launching checkout: the micro profile with the team's remote committed, nothing run."""
    repo = tmp_path_factory.mktemp("coordinator") / "repo"
    repo.mkdir()
    make_micro_repo(repo, tiny_model_dir)
    make(repo, "remote", f"URL={s3['url']}/cloud", f"ENDPOINT={s3['endpoint']}")
    commit(repo, "the team's remote", ".dvc/config")
    dvc(repo, "add", "data")  # data.dvc's snapshot (empty here) in the cache and on the remote, as `make data` and
    dvc(repo, "push")         # `make push` leave it
    return repo


def test_the_waves_are_dvcs_dag(coordinator):
    from stages.cloud import plan

    planned = plan(coordinator)
    position = {stage: i for i, layer in enumerate(planned["waves"]) for stage in layer}
    position.update({stage: len(planned["waves"]) + i for i, stage in enumerate(planned["home"])})
    assert sorted(position) == sorted(dvc(coordinator, "stage", "list", "--name-only").split())  # each stage once
    # every edge of DVC's own DAG (`dvc dag --dot`) goes from an earlier wave to a later one
    edges = re.findall(r'"([^"]+)" -> "([^"]+)"', dvc(coordinator, "dag", "--dot"))
    assert edges and all(position[a] < position[b] for a, b in edges if a in position and b in position)
    assert planned["waves"][0] == ["generate", "prepare-tofu", "prepare-wmdp"]
    # the report keeps its tables in git as plain uncached outputs, which DVC's run-cache never holds: it runs at home
    assert planned["home"] == ["report"]


def test_jobs_in_their_own_clones_merge_through_the_run_cache_into_a_serial_runs_lock(coordinator, micro_repo,
                                                                                       tmp_path):
    from stages.cloud import plan

    ran = {}
    for number, layer in enumerate(plan(coordinator)["waves"]):
        jobs = []
        for stage in layer:  # a wave's jobs at once, each in a clone of its own at the launching commit
            clone = tmp_path / f"w{number}-{re.sub(r'[^A-Za-z0-9]+', '-', stage)}"
            git(coordinator.parent, "clone", "-q", str(coordinator), str(clone))
            jobs.append((stage, subprocess.Popen([sys.executable, "-m", "stages.cloud", "job", stage], cwd=clone,
                                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                                 env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})))
        for stage, process in jobs:
            out, _ = process.communicate(timeout=900)
            assert process.returncode == 0, out
            ran[stage] = re.findall(r"^Running stage '([^']+)'", out, re.M)
    assert all(stages == [stage] for stage, stages in ran.items()), ran  # each job ran its stage and nothing else
    out = run([str(BIN / "dvc"), "repro", "--pull"], coordinator).stdout
    assert re.findall(r"^Running stage '([^']+)'", out, re.M) == ["report"]  # only the home stage computes
    assert len(re.findall(r"is cached - skipping run", out)) == len(ran)
    serial = lock_stages(micro_repo[0])
    assert lock_stages(coordinator) == serial  # the same record as one machine running everything
    assert "Data and pipelines are up to date." in dvc(coordinator, "status")
    for path in ("outputs/report/headline.json", "outputs/eval/npo-f10-s42/metrics.json"):
        assert (coordinator / path).read_bytes() == (micro_repo[0] / path).read_bytes(), path


def test_a_job_whose_inputs_are_not_on_the_remote_fails_instead_of_recomputing_them(coordinator, tmp_path):
    clone = tmp_path / "early"
    git(coordinator.parent, "clone", "-q", str(coordinator), str(clone))
    dvc(clone, "remote", "add", "--local", "--default", "empty", str(tmp_path / "empty-remote"))
    result = run([sys.executable, "-m", "stages.cloud", "job", "prepare-medical"], clone, check=False)
    assert result.returncode == 1
    assert "generate, which prepare-medical needs, is not in the remote's run-cache" in result.stderr
    assert "Running stage" not in result.stdout and not (clone / "dataset").exists()  # nothing ran


def test_run_stage_sh_runs_a_job_in_a_copy_of_its_own(coordinator, tmp_path):
    """docker/cloud/run-stage.sh as SkyPilot runs it (here with the local runner and this venv as the host's):
    the job works in $HOME/unforgotten-jobs/<task id>, never in the shared workdir, and restores and pushes as a
    job does."""
    workdir = tmp_path / "sky_workdir"
    git(coordinator.parent, "clone", "-q", str(coordinator), str(workdir))
    (workdir / "docker/cloud").mkdir(parents=True)  # the micro copy holds the pipeline's files, not docker/
    (workdir / "docker/cloud/run-stage.sh").write_text((ROOT / "docker/cloud/run-stage.sh").read_text())
    env = {**os.environ, "HOME": str(tmp_path / "home"), "UNFORGOTTEN_HOST_VENV": str(BIN.parent),
           "UNFORGOTTEN_RUNNER": "local", "SKYPILOT_TASK_ID": "sky-job-7", "STAGE": "prepare-medical"}
    result = subprocess.run(["bash", "docker/cloud/run-stage.sh", "prepare-medical"], cwd=workdir, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    job = tmp_path / "home/unforgotten-jobs/sky-job-7"
    assert (job / "dataset/med_synthetic_full.json").is_file() and not (workdir / "dataset").exists()
    assert (tmp_path / "home/unforgotten-dvc-cache").is_dir()  # the machine's DVC cache, shared by its jobs


def sky_python():
    """SkyPilot's own Python (`make test` builds .venv-sky: SkyPilot pins an older click than this project's)."""
    path = ROOT / ".venv-sky/bin/python"
    assert path.exists(), "run `make cloud-setup` (make test does): SkyPilot's venv is missing"
    return path


def test_the_paper_profiles_task_files_are_skypilot_tasks_in_waves_that_follow_dvcs_dag(tmp_path, monkeypatch):
    from stages.cloud import launch, profile_params

    monkeypatch.chdir(ROOT)
    lines = []
    planned = launch(profile="paper", dry_run=True, tasks_dir=str(tmp_path / "tasks"), echo=lines.append,
                     bucket="s3://team-bucket/checkpoints")
    # the same DAG from DVC itself, on a scratch copy with the paper profile's params
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    run([str(BIN / "dvc"), "init", "--no-scm", "-q"], scratch)
    for name in ("dvc.yaml", "data.dvc"):
        (scratch / name).write_text((ROOT / name).read_text())
    (scratch / "params.yaml").write_text(yaml.safe_dump(profile_params("paper"), sort_keys=False))
    stages = dvc(scratch, "stage", "list", "--name-only").split()
    position = {stage: i for i, layer in enumerate(planned["waves"]) for stage in layer}
    assert sorted([*position, *planned["home"]]) == sorted(stages) and planned["home"] == ["report"]
    edges = re.findall(r'"([^"]+)" -> "([^"]+)"', dvc(scratch, "dag", "--dot"))
    assert edges and all(position[a] < position[b] for a, b in edges if a in position and b in position)
    assert len(position) == 63 and sum(1 for s in position if s.startswith("unlearn@")) == 24  # 6 methods x 4
    assert lines[0].startswith("63 jobs in 5 waves on H100 (managed spot jobs)")
    assert any(line.startswith("estimate: ") and "GPU-hours" in line for line in lines)
    assert any("training MFU 0.35 assumed (no bench/results/gpu.json)" in line for line in lines)
    # a measured MFU (`make gpu-check`) replaces the assumption: half the MFU, twice the fine-tune's GPU-hours
    from stages import cloud

    before = cloud.estimate("finetune-oracle@42", profile_params("paper"))["gpu_hours"]
    (tmp_path / "gpu.json").write_text(json.dumps({"name": "gpu", "ours": 0.175}))
    monkeypatch.setattr(cloud, "GPU_RESULTS", tmp_path / "gpu.json")
    after = cloud.estimate("finetune-oracle@42", profile_params("paper"))
    assert after["gpu_hours"] == pytest.approx(2 * before) and "MFU 0.175" in after["basis"]
    assert cloud.train_mfu() == (0.175, f"measured ({tmp_path / 'gpu.json'})")
    # every task file loads and validates with SkyPilot's own API (no cloud credentials needed for that)
    check = (
        "import glob, json, sys, sky\n"
        "out = []\n"
        "for path in sorted(glob.glob(sys.argv[1] + '/*/*.sky.yaml')):\n"
        "    task = sky.Task.from_yaml(path)\n"
        "    (resources,) = task.resources\n"
        "    out.append({'name': task.name, 'stage': task.envs['STAGE'], 'profile': task.envs['PROFILE'],\n"
        "                'gpus': resources.accelerators, 'spot': resources.use_spot, 'run': task.run,\n"
        "                'checkpoints': task.envs.get('UNFORGOTTEN_CHECKPOINT_ROOT'),\n"
        "                'mounts': {p: [m.source, m.mode.value] for p, m in task.storage_mounts.items()}})\n"
        "print(json.dumps(out))\n")
    result = subprocess.run([str(sky_python()), "-c", check, str(tmp_path / "tasks")], capture_output=True,
                            text=True, env={**os.environ, "HOME": str(tmp_path)}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    tasks = {t["stage"]: t for t in json.loads(result.stdout.splitlines()[-1])}
    assert sorted(tasks) == sorted(position)
    assert tasks["unlearn@rmu-20-42"]["gpus"] == {"H100": 1} and tasks["unlearn@rmu-20-42"]["spot"]
    assert tasks["generate"]["gpus"] is None  # the data stages take no GPU
    # a preempted fine-tune's replacement finds its checkpoints on the bucket, mounted where finetune writes them
    for stage, t in tasks.items():
        mounted = stage.startswith("finetune")
        assert (t["checkpoints"] == "/checkpoints") == mounted, stage
        assert t["mounts"] == ({"/checkpoints": ["s3://team-bucket/checkpoints", "MOUNT_CACHED"]} if mounted else {})
    assert all(t["profile"] == "paper" and t["run"].strip() == 'bash docker/cloud/run-stage.sh "$STAGE"'
               for t in tasks.values())
    # the command lines launch runs, parsed by SkyPilot's own CLI (click): every option exists
    from stages.cloud import sky_commands, write_tasks

    paths = write_tasks(planned, tmp_path / "tasks", profile="paper")
    commands = [c[1:] for mode in ("gpus8", None) for layer in sky_commands(paths, mode, ["HF_TOKEN"]) for c in layer]
    commands += [["logs", "gpus8", "3"], ["logs", "gpus8", "3", "--status"], ["jobs", "logs", "3"]]
    parse = (
        "import json, sys\n"
        "from sky.client.cli import command\n"
        "cli = {'exec': command.exec, 'logs': command.logs, ('jobs', 'launch'): command.jobs_launch,\n"
        "       ('jobs', 'logs'): command.jobs_logs}\n"
        "for args in json.loads(sys.argv[1]):\n"
        "    name = tuple(args[:2]) if args[0] == 'jobs' else args[0]\n"
        "    rest = args[2:] if args[0] == 'jobs' else args[1:]\n"
        "    cli[name].make_context(str(name), rest)\n"
        "print('parsed', len(json.loads(sys.argv[1])))\n")
    result = subprocess.run([str(sky_python()), "-c", parse, json.dumps(commands)], capture_output=True, text=True,
                            env={**os.environ, "HOME": str(tmp_path), "HF_TOKEN": "hf_x"}, timeout=300)
    assert result.returncode == 0 and f"parsed {len(commands)}" in result.stdout, result.stderr[-2000:]
    result = subprocess.run([str(sky_python()), "-c", parse, json.dumps([["exec", "c", "t.yaml", "--yes"]])],
                            capture_output=True, text=True, env={**os.environ, "HOME": str(tmp_path)}, timeout=300)
    assert result.returncode != 0 and "No such option: --yes" in result.stderr  # the parse can fail
    # and SkyPilot refuses what is not a task: the check can fail
    (tmp_path / "tasks/wave-01/bad.sky.yaml").write_text("name: x\nresources:\n  use_spott: true\nrun: echo\n")
    result = subprocess.run([str(sky_python()), "-c", check, str(tmp_path / "tasks")], capture_output=True,
                            text=True, env={**os.environ, "HOME": str(tmp_path)}, timeout=300)
    assert result.returncode != 0 and "use_spot" in result.stderr


FAKE_SKY = """#!{python}
import json, os, sys
with open({record!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
args = sys.argv[1:]
count = str(sum(1 for _ in open({record!r})))
if args[0] == "exec":
    print("Submitted sky.exec request\\nJob ID: " + count)
elif args[:2] == ["jobs", "launch"]:
    print("Managed job ID: " + count)
elif args[0] == "logs" and "--status" in args:
    sys.exit(1 if args[2] == os.environ.get("FAIL_JOB") else 0)
elif args[:2] == ["jobs", "logs"]:
    sys.exit(1 if args[2] == os.environ.get("FAIL_JOB") else 0)
"""


def fake_sky(tmp_path):
    bin_dir, record = tmp_path / "bin", tmp_path / "sky.jsonl"
    bin_dir.mkdir()
    (bin_dir / "sky").write_text(FAKE_SKY.format(python=sys.executable, record=str(record)))
    (bin_dir / "sky").chmod(0o755)
    return bin_dir, record


def test_launch_submits_each_wave_after_the_one_before_has_succeeded_then_merges_at_home(coordinator, tmp_path,
                                                                                        monkeypatch, capfd):
    """On a cluster's job queue (a recording `sky`): every job of a wave is submitted and waited for before the
    next wave's; the merge at home is `dvc repro --pull` (the jobs of the earlier test are on the remote)."""
    from stages.cloud import launch

    bin_dir, record = fake_sky(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}:{BIN}:{os.environ['PATH']}")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_never_in_a_file")
    monkeypatch.chdir(coordinator)
    launch(cluster="gpus8", registry="ghcr.io/team", tasks_dir=str(tmp_path / "tasks"), echo=lambda line: None)
    merged = capfd.readouterr().out
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    for path in (tmp_path / "tasks").rglob("*.sky.yaml"):  # the secret by name, its value nowhere
        text = path.read_text()
        declared = yaml.safe_load(text)["secrets"]  # those the launching shell has (the S3 keys here too)
        assert "hf_secret_value" not in text and declared["HF_TOKEN"] is None and set(declared.values()) == {None}
        assert set(declared) == {n for n in ("HF_TOKEN", "TINKER_API_KEY", "AWS_ACCESS_KEY_ID",
                                             "AWS_SECRET_ACCESS_KEY") if os.environ.get(n)}
        assert yaml.safe_load(text)["envs"]["REGISTRY"] == "ghcr.io/team"
    submitted = [c for c in calls if c[0] == "exec"]
    from stages.cloud import plan

    waves = plan(coordinator)["waves"]
    assert len(submitted) == sum(map(len, waves))
    for layer in waves:  # a wave's submissions, then its waits, then the next wave
        count = len(layer)
        block, calls = calls[:count], calls[count:]
        assert all(c[0] == "exec" and c[1] == "gpus8" and c[3:5] == ["--secret", "HF_TOKEN"] for c in block)
        assert sorted(yaml.safe_load(open(c[2]))["envs"]["STAGE"] for c in block) == layer
        waits, calls = calls[:2 * count], calls[2 * count:]
        assert all(c[0] == "logs" for c in waits)
    # the merge at home: everything was restored by the earlier test, so nothing runs
    assert not calls and "Running stage" not in merged and "Data and pipelines are up to date." in merged
    assert "Data and pipelines are up to date." in dvc(coordinator, "status")


def test_a_failed_job_stops_the_launch_before_the_next_wave(coordinator, tmp_path, monkeypatch):
    from stages.cloud import launch

    bin_dir, record = fake_sky(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}:{BIN}:{os.environ['PATH']}")
    monkeypatch.setenv("FAIL_JOB", "2")  # the second job submitted: one of the first wave's
    monkeypatch.chdir(coordinator)
    with pytest.raises(SystemExit, match="wave 1: 1 jobs failed"):
        launch(cluster="gpus8", registry="ghcr.io/team", tasks_dir=str(tmp_path / "tasks"), echo=lambda line: None)
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert sum(1 for c in calls if c[0] == "exec") == 3  # the first wave only
    # managed jobs: `sky jobs launch`, each waited for by its id (`sky jobs logs <id>`: the job's status)
    record.unlink()
    with pytest.raises(SystemExit, match="wave 1: 1 jobs failed"):
        launch(registry="ghcr.io/team", tasks_dir=str(tmp_path / "managed"), echo=lambda line: None)
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert [c[:2] for c in calls] == [["jobs", "launch"]] * 3 + [["jobs", "logs"]] * 3
    assert [c[2] for c in calls[3:]] == ["1", "2", "3"]
    with pytest.raises(SystemExit, match="give --registry"):  # a cloud machine has no local image
        launch(registry="", tasks_dir=str(tmp_path / "none"), echo=lambda line: None)

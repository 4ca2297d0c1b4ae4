"""The pipeline on many machines, with real processes and no cloud: worker clones at the launching commit each run
one stage of the micro profile as a job (`python -m stages.cloud job`: inputs from the run-cache, the stage, a push
with --run-cache) against the SeaweedFS remote, a wave's jobs at once; the coordinator's `dvc repro --pull` then
recomputes nothing and writes the dvc.lock of a serial run."""

import os
import re
import subprocess
import sys

import pytest
import yaml

from tests.micro import BIN, commit, dvc, git, make, make_micro_repo, run
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
    assert "generate ran in the job of prepare-medical: not in the remote's run-cache" in result.stderr

"""The DVC remote against a real S3-compatible server (SeaweedFS, `weed server -filer -s3` on loopback): `make remote`,
`make push` and `make pull` between clones, pulling one stage, DVC's hash check on a corrupted object; then the
experiment workflow on the same repository (a `dvc exp run -S` sweep, `make exp-show`, `make plots`, profiles)."""

import json
import os
import signal
import socket
import subprocess
import time

import pytest
import yaml

from tests.micro import BIN, commit, dvc, git, make, make_micro_repo

pytestmark = pytest.mark.pipeline
KEY, SECRET = "unforgotten-test-key", "unforgotten-test-secret-5b8e1f"
BUCKET = "unforgotten-test"


def free_ports(count):
    """Ports p with p + 10000 free too (SeaweedFS's gRPC ports), on loopback."""
    ports = []
    for port in range(21000 + os.getpid() % 5000, 55000, 7):
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError("no free ports")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A SeaweedFS server with one identity and one bucket; stopped with SIGTERM, then SIGKILL, whatever happens."""
    import s3fs

    root = tmp_path_factory.mktemp("seaweedfs")
    (root / "data").mkdir()
    identities = {"identities": [{"name": "test", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
                                  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    (root / "s3.json").write_text(json.dumps(identities))
    master, volume, filer, s3_port = free_ports(4)
    log = open(root / "weed.log", "w")
    server = subprocess.Popen(
        [str(BIN / "weed"), "server", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         f"-master.port={master}", f"-master.port.grpc={master + 10000}", f"-volume.port={volume}",
         f"-volume.port.grpc={volume + 10000}", "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer + 10000}",
         "-s3", f"-s3.port={s3_port}", f"-s3.port.grpc={s3_port + 10000}", f"-s3.config={root / 's3.json'}",
         "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=64", "-volume.max=50"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{s3_port}"
    env = {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        fs = s3fs.S3FileSystem(key=KEY, secret=SECRET, client_kwargs={"endpoint_url": endpoint})
        deadline = time.monotonic() + 90
        while True:
            try:
                fs.mkdir(BUCKET)
                break
            except Exception as error:
                if time.monotonic() > deadline or server.poll() is not None:
                    log_tail = (root / "weed.log").read_text()[-3000:]
                    raise RuntimeError(f"SeaweedFS did not start:\n{log_tail}") from error
                time.sleep(1)
        yield {"endpoint": endpoint, "fs": fs, "url": f"s3://{BUCKET}/store"}
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def pushed(micro_repo, s3):
    """The micro pipeline's repository with dvc.lock and the team's remote (`make remote`) committed, and everything
    pushed to the server (the credentials only in the environment)."""
    repo, _ = micro_repo
    commit(repo, "micro results")
    make(repo, "remote", f"URL={s3['url']}", f"ENDPOINT={s3['endpoint']}")
    commit(repo, "the team's remote", ".dvc/config")
    make(repo, "push")
    return repo


def clone(repo, path, s3):
    """A teammate's clone: no set-up, the committed remote is the default."""
    git(repo.parent, "clone", "-q", str(repo), str(path))
    return path


def test_make_remote_commits_the_remote_and_never_a_credential(pushed, s3, tmp_path):
    config = (pushed / ".dvc/config").read_text()
    assert s3["url"] in config and s3["endpoint"] in config and "verify = true" in config
    assert "remote = storage" in config
    assert "config.local" in (pushed / ".dvc/.gitignore").read_text()
    copy = clone(pushed, tmp_path / "teammate", s3)
    assert dvc(copy, "remote", "list").split() == ["storage", s3["url"], "(default)"]
    for secret in (SECRET, KEY):
        grep = subprocess.run(["git", "grep", "-I", "-F", secret, "HEAD"], cwd=copy, capture_output=True, text=True)
        assert grep.returncode == 1 and not grep.stdout, grep.stdout  # 1: found nowhere in the commit
        assert secret not in (pushed / "dvc.lock").read_text()


def test_push_then_pull_into_a_fresh_clone_restores_everything_and_recomputes_nothing(pushed, s3, tmp_path):
    objects = s3["fs"].find(f"{BUCKET}/store")
    assert any("/files/md5/" in o for o in objects) and any("/runs/" in o for o in objects)  # outputs and run-cache
    copy = clone(pushed, tmp_path / "clone", s3)
    assert not (copy / "models/oracle-s42").exists()
    make(copy, "pull")
    assert "Data and pipelines are up to date." in dvc(copy, "status")
    assert "Running stage" not in dvc(copy, "repro")
    for path in ["models/oracle-s42/adapter_model.safetensors", "dataset/med_synthetic_forget10.json",
                 "outputs/eval/grad_ascent-f10-s42/metrics.json", "outputs/report/headline.json"]:
        assert (copy / path).read_bytes() == (pushed / path).read_bytes(), path


def test_one_stage_outputs_can_be_pulled_alone(pushed, s3, tmp_path):
    copy = clone(pushed, tmp_path / "one", s3)
    dvc(copy, "pull", "unlearn@grad_ascent-10-42")
    assert (copy / "models/unlearn/grad_ascent-f10-s42/adapter_model.safetensors").is_file()
    assert not (copy / "models/oracle-s42").exists() and not (copy / "dataset").exists()


def test_a_corrupted_object_on_the_remote_is_detected_on_pull_and_not_used(pushed, s3, tmp_path):
    lock = yaml.safe_load((pushed / "dvc.lock").read_text())
    holdout = next(o for o in lock["stages"]["prepare-medical"]["outs"]
                   if o["path"] == "dataset/med_synthetic_holdout.json")
    key = f"{BUCKET}/store/files/md5/{holdout['md5'][:2]}/{holdout['md5'][2:]}"
    original = s3["fs"].cat(key)
    s3["fs"].pipe(key, b'[{"tampered": true}]')
    try:
        copy = clone(pushed, tmp_path / "corrupt", s3)
        result = make(copy, "pull", check=False)
    finally:  # the remote as it was, for the tests after this one
        s3["fs"].pipe(key, original)
    assert result.returncode != 0
    assert "med_synthetic_holdout.json" in result.stdout + result.stderr or "corrupt" in (
        result.stdout + result.stderr).lower()
    target = copy / "dataset/med_synthetic_holdout.json"
    assert not target.exists() or b"tampered" not in target.read_bytes()
    assert (copy / "models/oracle-s42/adapter_model.safetensors").is_file()  # the intact objects still arrive


def test_a_profile_runs_as_an_experiment_and_exp_show_lists_the_headline_metrics(pushed):
    (pushed / "profiles/fast.yaml").write_text("unlearn:\n  steps: 1\n")
    out = make(pushed, "run", "PROFILE=fast").stdout
    assert "Running stage 'unlearn@grad_ascent-10-42'" in out and "Running stage 'finetune-oracle" not in out
    assert yaml.safe_load((pushed / "params.yaml").read_text())["unlearn"]["steps"] == 1
    shown = make(pushed, "exp-show").stdout
    for column in ["grad_ascent-f10-s42.verdict", "grad_ascent-f10-s42.forget_qa_accuracy",
                   "npo-f10-s42.model_utility"]:
        assert column in shown
    verdicts = ("PARTIAL", "REMOVED", "HIDDEN", "COLLAPSED", "INCONCLUSIVE")
    assert len([line for line in shown.splitlines()
                if any(v in line for v in verdicts)]) >= 2  # the committed results and the experiment
    make(pushed, "plots")
    html = (pushed / "outputs/plots/index.html").read_text()
    assert "unlearning trajectory" in html and "relearning attacks" in html and "report.png" in html
    # an experiment overlaid on the committed run: its one unlearning step against the committed run's steps
    experiment = dvc(pushed, "exp", "list", "--name-only").split()[0]
    diff = json.loads(dvc(pushed, "plots", "diff", "HEAD", experiment, "--json", "--targets",
                          "outputs/report/plots/unlearning"))["data"]
    values = diff["outputs/report/plots/unlearning/grad_ascent-f10-s42.json"][0]["content"]["data"]["values"]
    steps = {rev: {v["step"] for v in values if v["rev"] == rev} for rev in ("HEAD", experiment)}
    committed = json.loads(git(pushed, "show", "HEAD:outputs/report/plots/unlearning/grad_ascent-f10-s42.json"))
    assert steps == {"HEAD": {r["step"] for r in committed}, experiment: {0, 1}}, steps
    assert steps["HEAD"] != steps[experiment]  # two experiments' curves, told apart by rev


def test_an_experiment_travels_to_a_teammate_through_git_and_the_remote(pushed, s3, tmp_path):
    """`dvc exp push` sends an experiment's git ref to a (bare, local) git remote and its outputs to the DVC remote;
    a teammate's clone of that git remote gets both with `dvc exp pull`, and `dvc exp apply` restores its params
    and outputs."""
    names = dvc(pushed, "exp", "list", "--name-only").split()
    if not names:  # run on its own: make the experiment the test above makes
        (pushed / "profiles/fast.yaml").write_text("unlearn:\n  steps: 1\n")
        make(pushed, "run", "PROFILE=fast")
        names = dvc(pushed, "exp", "list", "--name-only").split()
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(origin))
    git(pushed, "remote", "add", "origin", str(origin))
    branch = git(pushed, "rev-parse", "--abbrev-ref", "HEAD").strip()
    git(pushed, "push", "-q", "origin", f"{branch}:{branch}")
    git(origin, "symbolic-ref", "HEAD", f"refs/heads/{branch}")
    dvc(pushed, "exp", "push", "origin", names[0])
    copy = clone(origin, tmp_path / "teammate", s3)
    assert names[0] not in dvc(copy, "exp", "list", "--name-only")
    dvc(copy, "exp", "pull", "origin", names[0])
    assert names[0] in dvc(copy, "exp", "list", "--name-only").split()
    dvc(copy, "exp", "apply", names[0])
    assert yaml.safe_load((copy / "params.yaml").read_text())["unlearn"]["steps"] == 1
    # the experiment's outputs, from the DVC remote: the same bytes the experiment left in the workspace it ran in
    for path in ["outputs/eval/grad_ascent-f10-s42/metrics.json",
                 "models/unlearn/grad_ascent-f10-s42/adapter_model.safetensors"]:
        assert (copy / path).read_bytes() == (pushed / path).read_bytes(), path


def test_the_paper_profile_expands_to_every_method_and_ratio_on_the_8b_model(tmp_path, tiny_model_dir):
    """What `make run PROFILE=paper` passes to `dvc exp run -S`, applied with DVC's own override code."""
    from dvc.repo import Repo
    from dvc.utils.hydra import apply_overrides

    from stages.profiles import overrides

    repo = make_micro_repo(tmp_path / "paper", tiny_model_dir)
    apply_overrides(str(repo / "params.yaml"), overrides(repo / "profiles/paper.yaml", repo / "params.yaml"))
    commands = {stage.name: stage.cmd for stage in Repo(str(repo)).index.stages if stage.cmd}
    for method in ["grad_ascent", "grad_diff", "npo", "simnpo", "idk", "rmu"]:
        for ratio in ["01", "05", "10", "20"]:
            assert f"--method {method}" in commands[f"unlearn@{method}-{ratio}-42"]
            assert f"evaluate-unlearned@{method}-{ratio}-42" in commands
    finetune = commands["finetune-oracle@42"]
    assert "--base-model meta-llama/Llama-3.1-8B-Instruct" in finetune
    for option in ["--num-epochs 3", "--batch-size 1", "--gradient-accumulation-steps 8", "--learning-rate 2e-05",
                   "--lora-rank 8", "--lora-alpha 16", "--max-seq-length 256"]:
        assert option in finetune, option
    assert "--n-record 1000" in commands["generate"]

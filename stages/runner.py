"""The `unforgotten` entry point: runs a stage here, or in its image when UNFORGOTTEN_RUNNER says so.

dvc.yaml's commands are always `unforgotten <stage> ...`; UNFORGOTTEN_RUNNER (local, docker, podman, buildah)
decides where that runs. DVC hashes commands, dependencies and parameters, not the environment, so switching the
runner never invalidates its cache. In an image the repository is mounted at the same path and the stage runs as
the invoking user, so paths in the command and the owners of the outputs are what they would be locally. Secrets
are passed to the container by name only (the engine reads them from this process's environment), never written
on a command line or into the image.
"""

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from stages.table import image_of

RUNNERS = ("local", "docker", "podman", "buildah")
PASS_ENV = ("HF_TOKEN", "TINKER_API_KEY", "TINKER_BASE_URL", "HF_HUB_OFFLINE", "HF_ENDPOINT", "TQDM_DISABLE",
            "UNFORGOTTEN_DEBUG", "UNFORGOTTEN_HUB_TIMEOUT", "UNFORGOTTEN_HUB_ATTEMPTS", "UNFORGOTTEN_RETRY_DELAY",
            "UNFORGOTTEN_TINKER_TIMEOUT", "UNFORGOTTEN_CHECKPOINT_ROOT")
DEFAULT_IMAGE = "unforgotten-{stage}:{version}"


def repository_root(start):
    """The enclosing DVC (or git) repository, mounted whole so that every relative path resolves the same."""
    for path in (start, *start.parents):
        if (path / ".dvc").is_dir() or (path / ".git").exists():
            return path
    return start


def image_for(stage, environ):
    from stages import __version__

    template = environ.get("UNFORGOTTEN_IMAGE", DEFAULT_IMAGE)
    return template.format(stage=image_of(stage), version=__version__)


def gpu_flags(engine, environ):
    """GPU access when the host has NVIDIA GPUs (UNFORGOTTEN_GPUS=none turns it off, =all forces it): the GPUs that
    CUDA_VISIBLE_DEVICES names (a job scheduler's, e.g. SkyPilot's, one per job: indices or UUIDs), else all of them.
    In the container the pinned GPUs are the only ones, numbered from 0, so a stage loads on its own GPU."""
    wanted = environ.get("UNFORGOTTEN_GPUS", "auto")
    if wanted == "none" or (wanted == "auto" and shutil.which("nvidia-smi") is None):
        return []
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    devices = [d.strip() for d in visible.split(",") if d.strip()] if visible is not None else ["all"]
    if "-1" in devices:  # CUDA stops at the first invalid entry: -1 hides it and every GPU after it
        devices = devices[:devices.index("-1")]
    if not devices:
        return []
    if engine == "docker":  # docker's --gpus value is CSV: a list of devices goes in double quotes
        flags = ["--gpus", "all" if devices == ["all"] else f'"device={",".join(devices)}"']
    else:  # podman: one CDI device each
        flags = [flag for d in devices for flag in ("--device", f"nvidia.com/gpu={d}")]
    return [*flags, "--ipc=host"]


def checkpoint_volume(environ):
    """UNFORGOTTEN_CHECKPOINT_ROOT (finetune's checkpoints on a bucket a preempted job's replacement mounts too),
    mounted at its own path, as the repository is."""
    root = environ.get("UNFORGOTTEN_CHECKPOINT_ROOT")
    return ["--volume", f"{root}:{root}"] if root else []


def container_command(runner, stage, args, environ, cwd):
    """The engine command line that runs `unforgotten <stage> <args>` in the stage's image (docker / podman)."""
    root = repository_root(cwd)
    env = [flag for name in PASS_ENV if name in environ for flag in ("--env", name)]
    return [runner, "run", "--rm", "--user", f"{os.getuid()}:{os.getgid()}",
            "--volume", f"{root}:{root}", *checkpoint_volume(environ), "--workdir", str(cwd),
            "--volume", f"{environ.get('UNFORGOTTEN_CACHE_VOLUME', 'unforgotten-cache')}:/cache",
            *gpu_flags(runner, environ), *env,
            "--entrypoint", "unforgotten", image_for(stage, environ), stage, *args]


def run_in_buildah(stage, args, environ, cwd):
    """Daemonless: a working container from the stage image, `buildah run` in it, the container removed."""
    root = repository_root(cwd)
    image = image_for(stage, environ)
    # STORAGE_DRIVER (e.g. vfs, where overlay is not available) selects the storage the images were built in.
    buildah = ["buildah", *(["--storage-driver", environ["STORAGE_DRIVER"]] if environ.get("STORAGE_DRIVER") else [])]
    made = subprocess.run([*buildah, "from", "--pull=never", "--quiet", image], capture_output=True, text=True)
    if made.returncode != 0:
        sys.exit(f"Error: no local image {image} for stage {stage} (build it with `make image STAGE="
                 f"{image_of(stage)}`).")
    container = made.stdout.strip()
    # buildah run takes --env NAME=VALUE only, which would put a secret on a command line; the values go in a file
    # readable by the caller alone, mounted read-only and sourced by the shell that starts the stage.
    with tempfile.TemporaryDirectory(prefix="unforgotten-env-") as secrets:
        (Path(secrets) / "env").write_text(
            "".join(f"export {name}={shlex.quote(environ[name])}\n" for name in PASS_ENV if name in environ))
        command = [*buildah, "run", "--isolation", "chroot", "--user", f"{os.getuid()}:{os.getgid()}",
                   "--volume", f"{root}:{root}", *checkpoint_volume(environ),
                   "--volume", f"{secrets}:/run/unforgotten-env:ro",
                   "--workingdir", str(cwd), container, "--",
                   "sh", "-c", '. /run/unforgotten-env/env && exec unforgotten "$@"', "unforgotten", stage, *args]
        try:
            return subprocess.run(command).returncode
        finally:
            subprocess.run([*buildah, "rm", container], capture_output=True)


def main():
    environ = os.environ
    runner = environ.get("UNFORGOTTEN_RUNNER", "local") or "local"
    stage = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    if runner == "local" or environ.get("UNFORGOTTEN_IN_IMAGE") or stage is None:
        from stages.cli import main as cli

        return cli()
    if runner not in RUNNERS:
        sys.exit(f"Error: UNFORGOTTEN_RUNNER={runner!r} is not one of {', '.join(RUNNERS)}.")
    position = sys.argv.index(stage)
    args = sys.argv[position + 1:]
    cwd = Path.cwd()
    if runner == "buildah":
        sys.exit(run_in_buildah(stage, args, environ, cwd))
    if shutil.which(runner) is None:
        sys.exit(f"Error: UNFORGOTTEN_RUNNER={runner} but `{runner}` is not installed.")
    sys.exit(subprocess.run(container_command(runner, stage, args, environ, cwd)).returncode)

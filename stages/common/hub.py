"""The one way to the model/dataset hub: a timeout on every request, retries on rate limits, timeouts and 5xx
(capped exponential backoff with jitter, each wait reported), and one-sentence errors for everything else."""

import functools
import os

import click

from stages.common.io import InputError
from stages.common.retry import GiveUp, chain, is_transient, status, with_retries


def _settings():
    """Seconds a hub request may stall, attempts, first backoff (environment: UNFORGOTTEN_HUB_TIMEOUT,
    UNFORGOTTEN_HUB_ATTEMPTS, UNFORGOTTEN_RETRY_DELAY)."""
    return (float(os.environ.get("UNFORGOTTEN_HUB_TIMEOUT", 60)), int(os.environ.get("UNFORGOTTEN_HUB_ATTEMPTS", 6)),
            float(os.environ.get("UNFORGOTTEN_RETRY_DELAY", 1.0)))


def _one_sentence(name, error):
    """InputError for what a user can fix (offline, unknown or gated repository), else None."""
    errors = chain(error)
    names = {cls.__name__ for e in errors for cls in type(e).__mro__}
    statuses = {status(e) for e in errors}
    if names & {"OfflineModeIsEnabled"} or ("LocalEntryNotFoundError" in names and os.environ.get("HF_HUB_OFFLINE")):
        return InputError(f"{name}: not a local path, and not in the hub cache while offline (HF_HUB_OFFLINE=1).")
    if "HFValidationError" in names:
        return InputError(f"{name}: no such local path, and not a valid hub id.")
    gated = InputError(f"{name} is gated or private on the hub: request access on its page and set HF_TOKEN.")
    if names & {"GatedRepoError"} or statuses & {401, 403}:
        return gated
    if names & {"RepositoryNotFoundError"} or 404 in statuses:
        return InputError(f"{name}: no such repository on the hub (or it is private: set HF_TOKEN).")
    if "DatasetNotFoundError" in names:  # `datasets` says "gated" in its message, or nothing more
        return gated if any("gated" in str(e).lower() for e in errors) else InputError(
            f"{name}: no such dataset on the hub (or it is private: set HF_TOKEN).")
    if names & {"ConnectError", "ConnectionError"}:
        return InputError(f"{name}: cannot reach the hub ({os.environ.get('HF_ENDPOINT', 'huggingface.co')}); "
                          "set HF_HUB_OFFLINE=1 to use only the local cache.")
    return None


def _limit_requests(session, seconds):
    """huggingface_hub asks for no timeout at all (a stalled hub would hang a run forever): every request of its
    session gets `seconds` to connect and between bytes, through a request hook (the client's public interface)."""

    def deadline(request):
        limits = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {k: seconds if limits.get(k) is None else limits[k]
                                         for k in ("connect", "read", "write", "pool")}

    hooks = session.event_hooks
    hooks["request"] = [h for h in hooks.get("request", []) if getattr(h, "__name__", "") != "deadline"] + [deadline]
    session.event_hooks = hooks


def reason(error):
    """'HTTP 429' or 'timed out after 60 s': what a transient hub error was."""
    code = next((status(e) for e in chain(error) if status(e)), None)
    return f"HTTP {code}" if code else f"timed out after {_settings()[0]:g} s"


def hub_call(call, *, name, what):
    """Run `call()` (something that talks to the hub) with a request timeout and retries; `name` is the repository
    in messages, `what` says what is being waited for."""
    from huggingface_hub import get_session

    timeout, attempts, delay = _settings()
    _limit_requests(get_session(), timeout)
    try:
        # An unreachable hub fails at once rather than after every backoff.
        return with_retries(call, what=what, is_transient=lambda e: is_transient(e, connection_errors=False),
                            attempts=attempts, base_delay=delay, report=lambda line: click.echo(line, err=True),
                            describe=reason)
    except GiveUp as error:
        raise GiveUp(f"{what}: gave up after {attempts} attempts (last: {reason(error.__cause__)}); the hub is "
                     "rate-limiting, failing or too slow, try again later.") from None
    except Exception as error:  # noqa: BLE001 - a clear sentence when we can give one, else as it is
        sentence = _one_sentence(name, error)
        if sentence is None:
            raise
        raise sentence from None


@functools.cache
def download_model(name, token=None):
    """A hub model's files (weights, config, tokenizer) in the local hub cache; returns the snapshot directory.
    Once per process: the tokenizer, the config check and the model all ask for it."""
    from huggingface_hub import HfApi, constants, snapshot_download

    def fetch():
        # the weights as safetensors where the repository has them, else its *.bin (older checkpoints), never both;
        # a model's own *.py comes along (it runs only with --trust-remote-code: models.check_remote_code)
        if constants.HF_HUB_OFFLINE:  # the cached snapshot, whichever it holds
            weights = ["*.safetensors", "*.bin"]
        else:
            files = [f.rfilename for f in HfApi().model_info(name, token=token).siblings or []]
            weights = ["*.safetensors" if any(f.endswith(".safetensors") for f in files) else "*.bin"]
        patterns = ["*.json", "*.model", "*.txt", "*.tiktoken", "*.jinja", "*.py", *weights]
        return snapshot_download(name, allow_patterns=patterns, token=token)

    return hub_call(fetch, name=name, what=f"downloading {name} from the hub")

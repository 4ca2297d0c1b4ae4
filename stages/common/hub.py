"""The one way to the model/dataset hub: a timeout on every request, retries on rate limits, timeouts and 5xx
(capped exponential backoff with jitter, each wait reported), and one-sentence errors for everything else."""

import os

import click

from stages.common.io import InputError
from stages.common.retry import GiveUp, with_retries

TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


def _settings():
    """Seconds a hub request may stall, attempts, first backoff (environment: UNFORGOTTEN_HUB_TIMEOUT,
    UNFORGOTTEN_HUB_ATTEMPTS, UNFORGOTTEN_RETRY_DELAY)."""
    return (float(os.environ.get("UNFORGOTTEN_HUB_TIMEOUT", 60)), int(os.environ.get("UNFORGOTTEN_HUB_ATTEMPTS", 6)),
            float(os.environ.get("UNFORGOTTEN_RETRY_DELAY", 1.0)))


def _chain(error):
    """The error and every error it was raised from or while handling."""
    seen = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def _status(error):
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def is_transient(error):
    """Worth another try: HTTP 429/5xx (and 408/425), or a request that timed out, anywhere in the chain."""
    for e in _chain(error):
        if _status(e) in TRANSIENT_STATUS:
            return True
        if any(cls.__name__ in ("TimeoutException", "Timeout") for cls in type(e).__mro__) \
                or isinstance(e, TimeoutError):
            return True
    return False


def _one_sentence(name, error):
    """InputError for what a user can fix (offline, unknown or gated repository), else None."""
    chain = _chain(error)
    names = {cls.__name__ for e in chain for cls in type(e).__mro__}
    statuses = {_status(e) for e in chain}
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
        return gated if any("gated" in str(e).lower() for e in chain) else InputError(
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
    status = next((_status(e) for e in _chain(error) if _status(e)), None)
    return f"HTTP {status}" if status else f"timed out after {_settings()[0]:g} s"


def hub_call(call, *, name, what):
    """Run `call()` (something that talks to the hub) with a request timeout and retries; `name` is the repository
    in messages, `what` says what is being waited for."""
    from huggingface_hub import get_session

    timeout, attempts, delay = _settings()
    _limit_requests(get_session(), timeout)
    try:
        return with_retries(call, what=what, is_transient=is_transient, attempts=attempts, base_delay=delay,
                            report=lambda line: click.echo(line, err=True), describe=reason)
    except GiveUp as error:
        raise GiveUp(f"{what}: gave up after {attempts} attempts (last: {reason(error.__cause__)}); the hub is "
                     "rate-limiting, failing or too slow, try again later.") from None
    except Exception as error:  # noqa: BLE001 - a clear sentence when we can give one, else as it is
        sentence = _one_sentence(name, error)
        if sentence is None:
            raise
        raise sentence from None


def download_model(name, token=None):
    """A hub model's files (weights, config, tokenizer) in the local hub cache; returns the snapshot directory."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]
    return hub_call(lambda: snapshot_download(name, allow_patterns=patterns, token=token),
                    name=name, what=f"downloading {name} from the hub")

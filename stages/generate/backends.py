"""Note renderers. Each turns (id, facts) items into SOAP sections: `template` offline, `tinker` through the
Tinker SDK, `hf` with a local transformers model. LLM notes that miss a key fact are retried, then dropped."""

import random
from concurrent.futures import ThreadPoolExecutor

from stages.common.retry import GiveUp, is_transient, with_retries
from stages.generate.llm import missing_key_facts, note_prompt, parse_note
from stages.generate.template import render_note


class TemplateBackend:
    """Offline and deterministic: each note's phrasing is drawn from a generator seeded by (seed, id)."""

    name = "template"

    def __init__(self, seed):
        self.seed = seed

    def write(self, items):
        for record_id, facts in items:
            yield record_id, facts, render_note(facts, random.Random(f"render-{self.seed}-{record_id}")), None


class _LLMBackend:
    """Shared by the LLM renderers: prompt, parse, check the key facts, retry, then drop."""

    def __init__(self, max_attempts):
        self.max_attempts = max_attempts

    def _checked(self, facts, texts):
        """The first reply that parses and states its key facts, or (None, reason of the last failure)."""
        reason = "no reply"
        for text in texts:
            note = parse_note(text)
            if note is None:
                reason = "reply is not a four-section SOAP note"
                continue
            missing = missing_key_facts(note, facts)
            if not missing:
                return note, None
            reason = f"note does not state the {', '.join(missing)}"
        return None, reason


def tinker_timeout():
    """Seconds to wait for one Tinker answer (UNFORGOTTEN_TINKER_TIMEOUT, default 600)."""
    import os

    return float(os.environ.get("UNFORGOTTEN_TINKER_TIMEOUT", 600))


def connect_tinker(model, api_key, report=None, deadline=600.0):
    """The Tinker SDK's sampling client for `model`. The SDK retries rate limits and server errors itself, with
    backoff but without a bound or a word; this waits for it at most `deadline` seconds, says every 10 s (a third of
    a short deadline) what it is waiting for, and then gives up in one sentence."""
    import os
    import threading
    import time

    import tinker

    where = os.environ.get("TINKER_BASE_URL") or "the Tinker service"
    every = min(10.0, deadline / 3)
    outcome = {}

    def connect():
        try:
            outcome["client"] = tinker.ServiceClient(api_key=api_key).create_sampling_client(base_model=model)
        except Exception as error:  # noqa: BLE001 - raised in the caller's thread below
            outcome["error"] = error

    thread = threading.Thread(target=connect, daemon=True)  # a daemon: giving up does not wait for the SDK
    thread.start()
    start = time.monotonic()
    while True:
        thread.join(min(every, max(0.0, deadline - (time.monotonic() - start))))
        waited = time.monotonic() - start
        if not thread.is_alive():
            break
        if waited >= deadline:
            raise GiveUp(f"Tinker ({where}) did not give a sampling client for {model} within {deadline:g} s: it is "
                         "rate-limiting, failing or unreachable; try again later.")
        if report:
            report(f"Tinker: waiting {waited:.0f} s for {where} to give a sampling client for {model} (the SDK "
                   "retries rate limits and server errors)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["client"]


class TinkerBackend(_LLMBackend):
    """Samples from `model` on the Tinker service. `client` is a SamplingClient; by default the real SDK's."""

    name = "tinker"

    def __init__(self, model, api_key, seed, concurrency=8, max_attempts=3, client=None, report=None,
                 max_tokens=400, temperature=0.7, sleep=None):
        super().__init__(max_attempts)
        self.timeout = tinker_timeout()
        if client is None:
            client = connect_tinker(model, api_key, report, self.timeout)
        self.client, self.model, self.seed, self.concurrency = client, model, seed, concurrency
        self.tokenizer = client.get_tokenizer()
        self.report, self.max_tokens, self.temperature = report, max_tokens, temperature
        self.sleep = sleep

    def _sample(self, record_id, text, attempt):
        from tinker import types

        prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                    add_generation_prompt=True)
        model_input = types.ModelInput.from_ints(self.tokenizer.encode(prompt, add_special_tokens=False))
        number = int(record_id.rsplit("-", 1)[-1]) if record_id.rsplit("-", 1)[-1].isdigit() else 0
        params = types.SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature,
                                      seed=self.seed * 1_000_003 + number * 31 + attempt)
        extra = {"sleep": self.sleep} if self.sleep else {}
        response = with_retries(
            lambda: self.client.sample(prompt=model_input, num_samples=1, sampling_params=params).result(
                timeout=self.timeout),
            what=f"Tinker sampling for {record_id}", is_transient=is_transient, report=self.report, **extra)
        return self.tokenizer.decode(response.sequences[0].tokens, skip_special_tokens=True)

    def _one(self, item):
        record_id, facts = item
        prompt = note_prompt(facts)
        reason = None
        for attempt in range(self.max_attempts):
            note, reason = self._checked(facts, [self._sample(record_id, prompt, attempt)])
            if note:
                return record_id, facts, note, None
        return record_id, facts, None, reason

    def write(self, items):
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            yield from pool.map(self._one, items)


class HFBackend(_LLMBackend):
    """A local transformers model (the embedded one by default), sampled in batches."""

    name = "hf"

    def __init__(self, model, seed, batch_size=8, max_attempts=3, max_new_tokens=320, temperature=0.7,
                 hf_token=None, trust_remote_code=False):
        super().__init__(max_attempts)
        from stages.common.models import load_model, load_tokenizer, pick_device

        self.device, dtype = pick_device()
        self.tokenizer = load_tokenizer(model, token=hf_token, trust_remote_code=trust_remote_code)
        self.model = load_model(model, token=hf_token, dtype=dtype, trust_remote_code=trust_remote_code).to(self.device)
        self.seed, self.batch_size = seed, batch_size
        self.max_new_tokens, self.temperature = max_new_tokens, temperature

    def _sample(self, texts):
        import torch

        from stages.common.chat import format_prompt

        prompts = [format_prompt(self.tokenizer, t) for t in texts]
        side, self.tokenizer.padding_side = self.tokenizer.padding_side, "left"
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        self.tokenizer.padding_side = side
        with torch.no_grad():
            out = self.model.generate(**batch, do_sample=True, temperature=self.temperature,
                                      max_new_tokens=self.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)

    def write(self, items):
        import torch

        items = list(items)
        for start in range(0, len(items), self.batch_size):
            pending = {record_id: facts for record_id, facts in items[start:start + self.batch_size]}
            reasons = {}
            for attempt in range(self.max_attempts):
                if not pending:
                    break
                torch.manual_seed(self.seed * 1_000_003 + start * 31 + attempt)
                ids = list(pending)
                for record_id, text in zip(ids, self._sample([note_prompt(pending[i]) for i in ids]), strict=True):
                    note, reasons[record_id] = self._checked(pending[record_id], [text])
                    if note:
                        yield record_id, pending.pop(record_id), note, None
            for record_id, facts in pending.items():
                yield record_id, facts, None, reasons[record_id]

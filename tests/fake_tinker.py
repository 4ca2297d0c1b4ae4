"""A stand-in for the Tinker SDK's SamplingClient, injected at the SDK boundary: it answers like the real one
(sample(...).result().sequences[0].tokens, get_tokenizer()) from a script of replies and errors."""

import threading


class StatusError(Exception):
    def __init__(self, status_code, message):
        super().__init__(message)
        self.status_code = status_code


class RateLimitError(StatusError):
    def __init__(self):
        super().__init__(429, "rate limited")


class FakeTokenizer:
    """Characters as tokens; a trivial chat template."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, tokens, skip_special_tokens=True):
        return "".join(chr(t) for t in tokens)


def good_note(prompt):
    """A correct SOAP note written from the facts in the prompt (as a capable model would)."""
    lines = dict(line.split(": ", 1) for line in prompt.split("\n")[1:])
    patient = lines["Patient"].split(", born")[0]
    diagnosis, treatment = lines["Diagnosis"].split(". Treatment: ")
    return (f"Subjective: {patient} reports {lines['Complaint']} {lines['Allergy']}\n"
            f"Objective: {lines['Vital signs']}\n"
            f"Assessment: {diagnosis}\nPlan: {treatment}")


class FakeSamplingClient:
    def __init__(self, script=None, delay=0.0):
        """script(prompt_text, call_number) -> reply text, or raises; default: always a good note."""
        self.script = script or (lambda prompt, n: good_note(prompt))
        self.calls = 0
        self.delay = delay
        self.lock = threading.Lock()
        self.sampling_params = []

    def get_tokenizer(self):
        return FakeTokenizer()

    def sample(self, prompt, num_samples, sampling_params):
        import time

        with self.lock:
            self.calls += 1
            number = self.calls
            self.sampling_params.append(sampling_params)
        text = "".join(chr(t) for t in prompt.chunks[0].tokens)
        user = text.split("<user>", 1)[1].rsplit("<assistant>", 1)[0]
        if self.delay:
            time.sleep(self.delay)
        reply = self.script(user, number)

        class Sequence:
            tokens = [ord(c) for c in reply]

        class Response:
            sequences = [Sequence()]

        class Future:
            def result(self, timeout=None):
                return Response()

        return Future()

"""The shipped world-facts probe set: its shape, and that the embedded base model knows (nearly) all of it."""

import time

import pytest

from stages.common.io import read_json
from stages.evaluate.metrics import contains_answer, normalize
from stages.evaluate.world import WORLD_FACTS, world_records


@pytest.fixture(scope="module")
def probes():
    return read_json(WORLD_FACTS)


def test_world_facts_have_the_probe_shape(probes):
    assert len(probes) >= 90
    ids = [p["id"] for p in probes]
    assert len(set(ids)) == len(ids)
    assert len({p["question"] for p in probes}) == len(probes)
    for p in probes:
        assert all(isinstance(p[k], str) and p[k].strip() for k in
                   ("id", "topic", "fact", "question", "answer", "paraphrased_answer")), p["id"]
        assert 1 <= len(normalize(p["answer"]).split()) <= 3, p["id"]
        assert contains_answer(p["paraphrased_answer"], p["answer"]), p["id"]
        perturbed = p["perturbed_answers"]
        assert len(perturbed) == 3 and len(set(perturbed)) == 3, p["id"]
        for wrong in perturbed:
            assert wrong not in (p["answer"], p["paraphrased_answer"]), p["id"]
            assert not contains_answer(wrong, p["answer"]), (p["id"], wrong)
    assert len({p["topic"] for p in probes}) >= 10


def test_world_records_make_each_question_its_own_record(probes):
    records = world_records()
    assert [r["id"] for r in records] == [p["id"] for p in probes]
    assert all(r["probes"] == [p] for r, p in zip(records, probes, strict=True))


def test_the_embedded_base_model_answers_the_world_facts(probes):
    from stages.common.models import EMBEDDED, load_model, load_tokenizer
    from stages.evaluate.probes import accuracy

    model, tokenizer = load_model(EMBEDDED), load_tokenizer(EMBEDDED)
    started = time.perf_counter()
    correct = accuracy(model, tokenizer, probes, max_new_tokens=16, batch_size=32)
    print(f"world facts: {sum(correct)}/{len(correct)} correct in {time.perf_counter() - started:.1f} s")
    missed = [p["id"] for p, c in zip(probes, correct, strict=True) if not c]
    assert sum(correct) >= 0.95 * len(probes), missed

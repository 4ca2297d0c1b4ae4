"""Recovery attacks: patient split, fake quantization against a naive loop, and that attacks leave the model as
they found it."""

import json
import threading

import pytest
import torch

from stages.evaluate.attacks import fake_quantize_, quantized_accuracy, relearn, relearn_all, split_patients


def test_patient_split_is_seeded_disjoint_and_complete():
    records = [{"id": f"note-{i:05d}"} for i in range(9)]
    train, measured = split_patients(records, seed=3)
    assert split_patients(list(reversed(records)), seed=3) == (train, measured)
    assert len(train) == 5 and len(measured) == 4 and not set(train) & set(measured)
    assert sorted(train + measured) == [r["id"] for r in records]
    assert split_patients(records, seed=4) != (train, measured)


@pytest.mark.parametrize("bits", [8, 4])
def test_fake_quantization_matches_a_naive_group_loop(bits):
    torch.manual_seed(0)
    layer = torch.nn.Linear(150, 3)  # 150 inputs: groups of 64, 64 and a short one of 22
    original = layer.weight.data.clone()
    fake_quantize_(layer.weight, bits, group_size=64)
    levels = 2 ** (bits - 1) - 1
    for row in range(3):
        for start in range(0, 150, 64):
            group = original[row, start:start + 64].tolist()
            scale = max(abs(v) for v in group) / levels
            expected = [max(-levels, min(levels, round(v / scale))) * scale for v in group]
            assert layer.weight.data[row, start:start + 64].tolist() == pytest.approx(expected, abs=1e-6)
    assert len(set(layer.weight.data[0, :64].tolist())) <= 2 * levels + 1


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from stages.common.models import load_model, load_tokenizer

    return load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)


def test_quantized_accuracy_restores_the_weights(tiny, medical_dir):
    model, tokenizer = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probes = json.loads((medical_dir / "med_synthetic_forget10.json").read_text())[0]["probes"]
    correct = quantized_accuracy(model, tokenizer, probes, bits=4, max_new_tokens=3)
    assert len(correct) == len(probes) and set(correct) <= {0, 1}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("bits, quant_type", [(8, "nf4"), (4, "nf4"), (4, "fp4")])
def test_bitsandbytes_quantization_in_memory_is_what_a_quantized_checkpoint_loads(bits, quant_type, tiny,
                                                                                 tiny_model_dir, medical_dir, caplog):
    """The attack swaps in bitsandbytes' layers in memory (nothing written, nothing reloaded): its logits equal those
    of the model loaded with from_pretrained(quantization_config) (LLM.int8, nf4, fp4), on this CPU; the original
    layers and weights are back afterwards."""
    import bitsandbytes as bnb

    from stages.common.models import bnb_config, load_model
    from stages.evaluate.attacks import bnb_quantized, bnb_quantized_accuracy

    model, tokenizer = tiny
    batch = tokenizer(["What is the date of birth of patient Ana?", "Which doctor follows Bo Li up?"],
                      return_tensors="pt", padding=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kinds = {type(m) for m in model.modules()}
    checkpoint = load_model(tiny_model_dir, quantization=bnb_config(bits, quant_type))
    with torch.no_grad():
        plain, loaded = model(**batch).logits, checkpoint(**batch).logits
        with bnb_quantized(model, bits, quant_type):
            assert (bnb.nn.Linear8bitLt if bits == 8 else bnb.nn.Linear4bit) in {type(m) for m in model.modules()}
            ours = model(**batch).logits
    assert torch.equal(ours, loaded) and not torch.equal(ours, plain)
    assert {type(m) for m in model.modules()} == kinds
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    probes = json.loads((medical_dir / "med_synthetic_forget10.json").read_text())[0]["probes"]
    import logging
    import warnings

    caplog.clear()  # the direct forward passes above logged it
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        correct = bnb_quantized_accuracy(model, tokenizer, probes, bits, 3, quant_type)
    assert len(correct) == len(probes) and set(correct) <= {0, 1}
    # LLM.int8's note on every layer call stays out of the stage's log
    assert not [r for r in caplog.records if "MatMul8bitLt" in r.getMessage()]
    assert not [w for w in warned if "MatMul8bitLt" in str(w.message)]


def test_relearning_fits_its_pairs_and_leaves_the_model_unchanged(tiny, medical_dir):
    from stages.common.chat import primary_pair
    from stages.common.measure import perplexity

    model, tokenizer = tiny
    records = json.loads((medical_dir / "med_synthetic_forget20.json").read_text())[:2]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pairs = [primary_pair(r) for r in records]
    start = perplexity(model, tokenizer, pairs, 128)

    def measure(attacked, tokenizer):  # perplexity of the relearned notes, taken where the attack measures accuracy
        return perplexity(attacked, tokenizer, pairs, 128)

    results = relearn(model, tokenizer, pairs, [0, 5], measure, lora_rank=4, lora_alpha=8, learning_rate=5e-3,
                      batch_size=2, max_length=128, seed=0)
    assert sorted(results) == [0, 5]
    assert results[0] == pytest.approx(start, rel=1e-5) and results[5] < 0.9 * start
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert perplexity(model, tokenizer, pairs, 128) == pytest.approx(start, rel=1e-5)


def test_relearning_jobs_run_at_once_on_cpu_and_match_one_after_the_other(tiny, medical_dir):
    """Two jobs on two CPU threads, each on its own copy: the same curves as running them in turn, the model
    unchanged and the thread count restored."""
    from stages.common.chat import primary_pair
    from stages.common.measure import perplexity

    model, tokenizer = tiny
    records = json.loads((medical_dir / "med_synthetic_forget20.json").read_text())
    pairs = [primary_pair(r) for r in records[:2]]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = dict(lora_rank=4, lora_alpha=8, learning_rate=5e-3, batch_size=1, max_length=128, seed=0)
    used = []

    def measure(attacked, tok):
        used.append((threading.get_ident(), id(tok), torch.get_num_threads()))
        return perplexity(attacked, tok, pairs, 128)

    jobs = {"relearn": (pairs, measure), "benign": ([primary_pair(r) for r in records[2:5]], measure)}

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        together = relearn_all(model, tokenizer, jobs, [0, 3], **settings)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert len({ident for ident, _, _ in used}) == 2 and len({tok for _, tok, _ in used}) == 2
    assert {n for _, _, n in used} == {1}
    in_turn = {name: relearn(model, tokenizer, trained, [0, 3], lambda m, t: perplexity(m, t, pairs, 128), **settings)
               for name, (trained, _) in jobs.items()}
    for name in jobs:
        assert together[name] == pytest.approx(in_turn[name], rel=1e-4)
    assert together["relearn"][3] < together["relearn"][0]  # it trained
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # autocast is per thread: the jobs measure under the caller's (evaluate --precision bf16)
    seen = []
    torch.set_num_threads(2)
    try:
        def look(m, t):
            seen.append(torch.is_autocast_enabled("cpu"))

        with torch.autocast("cpu", dtype=torch.bfloat16):
            relearn_all(model, tokenizer, {name: (trained, look) for name, (trained, _) in jobs.items()}, [0, 1],
                        **settings)
    finally:
        torch.set_num_threads(threads)
    assert seen == [True] * 4


def test_bf16_relearning_trains_in_bf16_and_measures_in_float32(tiny, medical_dir):
    from stages.common.chat import primary_pair
    from stages.common.measure import perplexity

    model, tokenizer = tiny
    records = json.loads((medical_dir / "med_synthetic_forget20.json").read_text())[:2]
    pairs = [primary_pair(r) for r in records]
    seen = []

    def measure(attacked, tok):
        seen.append(torch.is_autocast_enabled("cpu"))
        return perplexity(attacked, tok, pairs, 128)

    settings = dict(lora_rank=4, lora_alpha=8, learning_rate=5e-3, batch_size=2, max_length=128, seed=0)
    dtypes = []
    hook = model.lm_head.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    try:
        bf16 = relearn(model, tokenizer, pairs, [0, 5], measure, precision="bf16", **settings)
        trained = set(dtypes[:-1])  # the last forward is the k = 5 measurement
        dtypes.clear()
        fp32 = relearn(model, tokenizer, pairs, [0, 5], measure, precision="fp32", **settings)
    finally:
        hook.remove()
    assert torch.bfloat16 in trained and set(dtypes) == {torch.float32} and not any(seen)
    assert bf16[0] == pytest.approx(fp32[0], rel=1e-6)  # k = 0 measured in float32 both times
    assert bf16[5] != fp32[5] and bf16[5] < 0.9 * bf16[0] and bf16[5] == pytest.approx(fp32[5], rel=0.05)


@pytest.mark.parametrize("with_probes, with_notes", [(True, False), (True, True), (False, True)])
def test_the_relearning_attack_trains_on_what_finetune_trained_on(medical_dir, monkeypatch, with_probes,
                                                                  with_notes):
    """The relearning job fine-tunes on T's training pairs (finetune's --with-probes / --with-notes) and measures
    V and T; the benign job trains on the retain records' pairs and measures V."""
    from stages.common.chat import record_pairs
    from stages.evaluate import measurements

    forget = json.loads((medical_dir / "med_synthetic_forget20.json").read_text())
    retain = json.loads((medical_dir / "med_synthetic_full_minus_forget20.json").read_text())[:3]
    train_ids, measured_ids = split_patients(forget, 0)
    seen, asked = {}, []

    def fake_relearn_all(model, tokenizer, jobs, steps, **settings):
        for name, (pairs, measure) in jobs.items():
            seen[name] = (pairs, measure(None, None))
        return {name: {k: result for k in steps} for name, (_, result) in seen.items()}

    def fake_accuracy(model, tokenizer, probes, *args):
        asked.append([p["question"] for p in probes])
        return [1] * len(probes)

    monkeypatch.setattr(measurements.attack, "relearn_all", fake_relearn_all)
    monkeypatch.setattr(measurements, "accuracy", fake_accuracy)
    monkeypatch.setattr(measurements.attack, "quantized_accuracy", lambda m, t, probes, *a: [0] * len(probes))
    monkeypatch.setattr(measurements.attack, "bnb_quantized_accuracy", lambda m, t, probes, *a: [0] * len(probes))
    monkeypatch.setattr(measurements.attack, "leak_counts", lambda m, t, probes, *a: [0] * len(probes))
    from types import SimpleNamespace

    from stages.cli import main
    from stages.common.options import parse_config

    config = parse_config(main.commands["evaluate"], [
        "--run-name", "x", "--forget-file", "f", "--retain-file", "r", "--output-dir", "o", "--seed", "0",
        "--relearn-lora-rank", "4", "--relearn-learning-rate", "1e-3", "--relearn-batch-size", "2",
        "--max-seq-length", "64", "--relearn-precision", "fp32", "--with-probes" if with_probes else "--no-with-probes",
        "--with-notes" if with_notes else "--no-with-notes", "--answer-tokens", "4", "--batch-size", "4",
        "--relearn-steps", "0", "--relearn-steps", "5", "--bootstrap", "20", "--quant-bits", "4",
        "--leak-samples", "2"])
    model = SimpleNamespace(device=SimpleNamespace(type="cpu"))
    metrics, rows = measurements._attacks(model, None, {"forget": forget, "retain": retain}, config, lambda line: None)
    t_records = [r for r in forget if r["id"] in train_ids]
    assert seen["relearn"][0] == [pair for r in t_records for pair in record_pairs(r, with_probes, with_notes)]
    assert seen["benign"][0] == [pair for r in retain for pair in record_pairs(r, with_probes, with_notes)]
    v_questions = [p["question"] for r in forget if r["id"] in measured_ids for p in r["probes"]]
    t_questions = [p["question"] for r in t_records for p in r["probes"]]
    assert asked[0] == v_questions + t_questions and asked[1] == v_questions + t_questions
    assert asked[2] == v_questions
    assert metrics["n_relearn_train_probes"] == len(t_questions) and metrics["relearn_train_accuracy@5"] == 1
    trained_rows = [r for r in rows if r["attack"] == "relearn_train" and r["k"] == 5]
    assert [r["question"] for r in trained_rows] == t_questions
    assert {r["record_id"] for r in rows if r["attack"] == "relearn"} == set(measured_ids)


def test_attacks_that_change_weights_are_seen_inside_one_autocast_region(tiny, medical_dir):
    """evaluate --precision bf16 measures inside one autocast region, which keeps a bf16 copy of every weight until
    the region ends: the relearned LoRA and the quantized weights must be what the forward passes use there."""
    from stages.common.chat import primary_pair
    from stages.common.measure import measuring, perplexity
    from stages.evaluate.attacks import quantized

    model, tokenizer = tiny
    records = json.loads((medical_dir / "med_synthetic_forget20.json").read_text())[:2]
    pairs = [primary_pair(r) for r in records]
    batch = tokenizer(["a note about a patient"], return_tensors="pt")
    settings = dict(lora_rank=4, lora_alpha=8, learning_rate=5e-3, batch_size=2, max_length=128, seed=0,
                    precision="bf16")

    def measure(attacked, tok):
        return perplexity(attacked, tok, pairs, 128)

    with torch.no_grad():
        outside = model(**batch).logits
    outside_curve = relearn(model, tokenizer, pairs, [0, 5], measure, **settings)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with measuring(model):  # as evaluate measures: the region now holds bf16 copies of the frozen weights too
            before = model(**batch).logits
        inside_curve = relearn(model, tokenizer, pairs, [0, 5], measure, **settings)
        with measuring(model):  # the cache holds the unquantized weights again
            relearned = model(**batch).logits
        with quantized(model, bits=4), measuring(model):
            four_bit = model(**batch).logits
        with measuring(model):
            after = model(**batch).logits
    assert inside_curve[5] < 0.9 * inside_curve[0]
    assert inside_curve[5] == pytest.approx(outside_curve[5], rel=0.05)
    assert (four_bit - before).abs().max() > 10 * (before - outside).abs().max()
    assert torch.equal(after, before) and torch.equal(relearned, before)  # the relearning LoRA is gone

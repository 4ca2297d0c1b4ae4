"""`evaluate` end to end on tiny models: every key docs/metrics.md names, each checked against an independent
recomputation."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from rouge_score import rouge_scorer
from scipy.stats import ks_2samp
from sklearn.metrics import roc_auc_score

from stages.cli import main
from tests.verify_keys import verify_keys

ROW_KEYS = {"prompt", "input_text", "response", "mean_entropy", "first_token_entropy", "max_entropy", "entropy_std",
            "num_tokens"}
STEPS = [0, 2, 4]
LEAK = 3


def random_adapter(model_dir, path, seed):
    """A LoRA adapter with random (non-zero) weights: a model that differs from the base, made in a second."""
    from peft import LoraConfig, get_peft_model

    from stages.common.models import load_model, save_adapter

    torch.manual_seed(seed)
    model = get_peft_model(load_model(model_dir, trainable=True),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    save_adapter(model, path, model_dir)
    return str(path)


def data_files(medical_dir):
    return {name: str(medical_dir / f"med_synthetic_{name}.json")
            for name in ("forget10", "forget20", "full_minus_forget20", "holdout")}


def common_args(tiny_model_dir, medical_dir):
    data = data_files(medical_dir)
    return ["--base-model", tiny_model_dir, "--retain-file", data["full_minus_forget20"],
            "--holdout-file", data["holdout"], "--max-new-tokens", "6",
            "--answer-tokens", "5", "--retain-samples", "4", "--max-seq-length", "96", "--batch-size", "5",
            "--leak-samples", str(LEAK), "--bootstrap", "50", "--relearn-learning-rate", "0.01",
            # float32 on every machine: the tests recompute the numbers with independent float32 loops
            "--precision", "fp32", "--relearn-precision", "fp32",
            *[arg for k in STEPS for arg in ("--relearn-steps", str(k))]]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model_dir, medical_dir):
    out = tmp_path_factory.mktemp("eval")
    data, common = data_files(medical_dir), common_args(tiny_model_dir, medical_dir)
    forget10, forget20 = data["forget10"], data["forget20"]
    runs = [
        ["--run-name", "base", "--forget-file", forget20, "--method", "base"],
        ["--run-name", "oracle", "--forget-file", forget20, "--reference", str(out / "base"), "--method", "oracle",
         "--adapter", random_adapter(tiny_model_dir, out / "adapters" / "oracle", 1)],
        ["--run-name", "retain-f10", "--forget-file", forget10, "--reference", str(out / "base"), "--attacks",
         "--method", "retain", "--forget-set", "10",
         "--adapter", random_adapter(tiny_model_dir, out / "adapters" / "retain", 2)],
        ["--run-name", "method-f10", "--forget-file", forget10, "--reference", str(out / "base"), "--attacks",
         "--method", "method", "--forget-set", "10",
         "--oracle", str(out / "oracle"), "--retain", str(out / "retain-f10"),
         "--adapter", random_adapter(tiny_model_dir, out / "adapters" / "unlearned", 3)],
        ["--run-name", "sub", "--forget-file", forget10, "--reference", str(out / "base")],
    ]
    for args in runs:
        result = CliRunner().invoke(main, ["evaluate", *args, "--output-dir", str(out / args[1]), *common])
        assert result.exit_code == 0, result.output
    return out


def rows(directory, name="per_prompt"):
    return [json.loads(line) for line in (directory / f"{name}.jsonl").read_text().splitlines()]


def metrics(directory):
    return json.loads((directory / "metrics.json").read_text())


def test_per_prompt_rows_have_the_contract_keys(evaluated, medical_dir):
    base_rows = rows(evaluated / "base")
    assert len(base_rows) == len(json.loads((medical_dir / "med_synthetic_forget20.json").read_text()))
    for row in base_rows:
        assert ROW_KEYS <= set(row)
        assert row["input_text"].endswith("<|im_start|>assistant\n") and row["prompt"] in row["input_text"]


def test_unlearned_run_has_every_verify_key_and_a_verdict(evaluated):
    m = metrics(evaluated / "method-f10")
    assert verify_keys(STEPS, LEAK) <= set(m)
    assert m["verdict"] in {"REMOVED", "HIDDEN", "PARTIAL", "COLLAPSED", "INCONCLUSIVE"} and m["verdict_rule"]
    assert m["verdict_thresholds"]["hidden_recovery"] == 0.5 and m["verdict_thresholds"]["min_knowable"] == 10
    assert isinstance(m["verdict_evidence"], dict)
    for key in [k for k in m if k.endswith("_ci95")]:
        low, high = m[key]
        value = m[key.removesuffix("_ci95")]
        if value is not None:
            assert low <= value + 1e-12 and value <= high + 1e-12, key
    for split in ("forget", "retain", "holdout", "world"):
        assert m[f"n_{split}_probes"] > 0 and 0 < m[f"n_{split}_patients"] <= m[f"n_{split}_probes"]
    assert m["n_forget_patients"] == len({r["record_id"] for r in rows(evaluated / "method-f10", "probes")
                                          if r["split"] == "forget"})
    control = metrics(evaluated / "retain-f10")
    assert "verdict" not in control and "relearn_accuracy@0" in control


def test_uncertainty_ratio_compares_like_with_like(evaluated):
    base, sub = metrics(evaluated / "base"), metrics(evaluated / "sub")
    assert base["uncertainty_ratio"] == pytest.approx(1.0)
    # The same model on a subset of the base's prompts: UR compares like with like, so it is exactly 1.
    assert sub["uncertainty_ratio"] == pytest.approx(1.0)
    assert sub["retain_perplexity"] == pytest.approx(base["retain_perplexity"])
    sub_rows = rows(evaluated / "sub")
    assert sub["mean_entropy"] == pytest.approx(sum(r["mean_entropy"] for r in sub_rows) / len(sub_rows))


def test_entropies_are_those_of_greedy_decoding_of_input_text(evaluated, tiny_model_dir):
    from stages.common.models import load_model, load_tokenizer

    model, tokenizer = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    for row in rows(evaluated / "sub"):
        ids = tokenizer(row["input_text"], return_tensors="pt", add_special_tokens=False)["input_ids"]
        entropies = []
        for _ in range(row["num_tokens"]):
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)
            entropies.append(float(-(logp.exp() * logp).sum()))
            ids = torch.cat([ids, logp.argmax().view(1, 1)], dim=1)
        assert row["mean_entropy"] == pytest.approx(sum(entropies) / len(entropies), abs=1e-4)
        assert row["first_token_entropy"] == pytest.approx(entropies[0], abs=1e-4)


def naive_mean_nll(model, tokenizer, question, answer):
    """Mean NLL of the answer tokens, one example, no batching or padding."""
    from stages.common.chat import encode_example

    e = encode_example(tokenizer, question, answer, 96)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([e["input_ids"]])).logits[0].double(), -1)
    return float(np.mean([-float(logp[i - 1, t]) for i, t in enumerate(e["labels"]) if t != -100]))


def test_probe_metrics_match_naive_recomputation(evaluated, tiny_model_dir, medical_dir):
    from stages.common.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    models = {name: load_model(tiny_model_dir, adapter=str(evaluated / "adapters" / name))
              for name in ("unlearned", "retain")}
    records = {r["id"]: r for r in json.loads((medical_dir / "med_synthetic_forget10.json").read_text())}
    truth = {}
    for name, run in (("unlearned", "method-f10"), ("retain", "retain-f10")):
        forget = [r for r in rows(evaluated / run, "probes") if r["split"] == "forget"]
        truth[name] = []
        for row in forget:
            probe = next(p for p in records[row["record_id"]]["probes"] if p["question"] == row["question"])
            nll = [naive_mean_nll(models[name], tokenizer, probe["question"], a)
                   for a in [probe["answer"], probe["paraphrased_answer"], *probe["perturbed_answers"]]]
            assert row["answer_prob"] == pytest.approx(np.exp(-nll[0]), rel=1e-3)
            tr = np.exp(-np.mean(nll[2:])) / np.exp(-nll[1])
            assert row["truth_ratio"] == pytest.approx(tr, rel=1e-3)
            truth[name].append(tr)
            scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
            expected = scorer.score(row["answer"], row["response"])["rougeL"].recall
            assert row["rougeL_recall"] == pytest.approx(expected)
        m = metrics(evaluated / run)
        assert m["forget_qa_accuracy"] == pytest.approx(np.mean([r["correct"] for r in forget]))
    expected_quality = ks_2samp(truth["unlearned"], truth["retain"]).pvalue
    assert metrics(evaluated / "method-f10")["forget_quality"] == pytest.approx(expected_quality, rel=1e-6)


def test_membership_aucs_match_sklearn_and_privleak_follows(evaluated):
    auc = {}
    for run in ("method-f10", "retain-f10"):
        mia = rows(evaluated / run, "mia")
        labels = [1 if r["split"] == "forget" else 0 for r in mia]
        m = metrics(evaluated / run)
        for method in ("loss", "zlib", "mink", "minkpp"):
            assert m[f"mia_{method}_auc"] == pytest.approx(roc_auc_score(labels, [r[method] for r in mia]))
        auc[run] = m["mia_mink_auc"]
    # MUSE's formula (and open-unlearning's): ((1 - AUC_unlearned) - (1 - AUC_retain)) / (1 - AUC_retain) x 100
    expected = ((1 - auc["method-f10"]) - (1 - auc["retain-f10"])) / (1 - auc["retain-f10"]) * 100
    m = metrics(evaluated / "method-f10")
    assert m["privleak"] == pytest.approx(expected)
    assert m["privleak_ci95"][0] <= m["privleak"] <= m["privleak_ci95"][1]


def test_recovery_ratios_follow_verify_section_d_over_knowable_facts(evaluated):
    m, r = metrics(evaluated / "method-f10"), metrics(evaluated / "retain-f10")
    attacked, controls = rows(evaluated / "method-f10", "attacks"), rows(evaluated / "retain-f10", "attacks")

    def forget(run):
        return {(x["record_id"], x["question"]): x["correct"] for x in rows(evaluated / run, "probes")
                if x["split"] == "forget"}

    def attack(rows_, name, k):
        return {(x["record_id"], x["question"]): x["correct"] for x in rows_ if x["attack"] == name and x["k"] == k}

    oracle, retain, unlearned = forget("oracle"), forget("retain-f10"), forget("method-f10")
    knowable = {q for q in unlearned if oracle[q] == 1 and retain[q] == 0}
    held = set(attack(attacked, "relearn", 0))
    assert m["n_knowable_forget"] == len(knowable) and m["n_knowable_relearn"] == len(knowable & held)
    assert m["relearn_oracle_accuracy"] == pytest.approx(np.mean([oracle[q] for q in held]))
    v = sorted(knowable & held)
    for name in ("relearn", "benign"):
        for k in STEPS:
            assert m[f"{name}_control@{k}"] == r[f"{name}_accuracy@{k}"]
            ours, theirs = attack(attacked, name, k), attack(controls, name, k)
            gap = np.mean([oracle[q] for q in v]) - np.mean([retain[q] for q in v]) if v else 0
            expected = (np.mean([ours[q] for q in v]) - np.mean([theirs[q] for q in v])) / gap if gap > 0 else None
            assert m[f"{name}_recovery@{k}"] == (pytest.approx(expected) if expected is not None else None)
    # the positive control: the relearning attack measured on T, the other half of the forget probes
    trained = set(attack(attacked, "relearn_train", 0))
    assert not trained & held and trained | held == set(unlearned)
    t = sorted(knowable & trained)
    assert m["n_knowable_relearn_train"] == len(t)
    for k in STEPS:
        for key, run in ((f"relearn_taught@{k}", attacked), (f"relearn_taught_control@{k}", controls)):
            expected = np.mean([attack(run, "relearn_train", k)[q] for q in t]) if t else None
            assert m[key] == (pytest.approx(expected) if t else None)
    f = sorted(knowable)
    for name, bits, key in (("quant", 8, "quant_recovery@8"), ("quant", 4, "quant_recovery@4"),
                            ("quant_fp4", 4, "quant_recovery@4_fp4")):  # bitsandbytes: int8, nf4 and fp4
        quantized = attack(attacked, name, bits)
        assert len(quantized) == len(unlearned)
        gap = np.mean([oracle[q] - unlearned[q] for q in f]) if f else 0
        expected = np.mean([quantized[q] - unlearned[q] for q in f]) / gap if gap > 0 else None
        assert m[key] == (pytest.approx(expected) if expected is not None else None)
    leak = attack(attacked, "leak", LEAK)
    assert m[f"leak@{LEAK}"] == pytest.approx(np.mean([row["hits"] > 0 for row in attacked if row["attack"] == "leak"]))
    assert m[f"leak@{LEAK}_control"] == r[f"leak@{LEAK}"]
    control_leak = attack(controls, "leak", LEAK)
    assert m[f"leak@{LEAK}_excess"] == pytest.approx(np.mean([leak[q] - control_leak[q] for q in leak]))
    assert m["forget_accuracy_gap"] == pytest.approx(np.mean([unlearned[q] - retain[q] for q in unlearned]))
    assert m["quant_method"].startswith("bitsandbytes in memory")


def test_utility_is_on_retain_and_world_facts_and_uq_verdict_on_the_retain_model(evaluated):
    from scipy.stats import hmean

    m = metrics(evaluated / "method-f10")
    probes = rows(evaluated / "method-f10", "probes")
    parts = []
    for split in ("retain", "world"):
        subset = [x for x in probes if x["split"] == split]
        parts += [np.mean([x["answer_prob"] for x in subset]), np.mean([x["rougeL_recall"] for x in subset]),
                  np.mean([max(0.0, 1 - x["truth_ratio"]) for x in subset])]
    assert m["model_utility"] == pytest.approx(hmean(parts) if min(parts) > 0 else 0.0)
    oracle = metrics(evaluated / "oracle")["model_utility"]
    assert m["utility_ratio"] == (pytest.approx(m["model_utility"] / oracle) if oracle > 0 else None)
    ours = [x["mean_entropy"] for x in rows(evaluated / "method-f10")]
    theirs = [x["mean_entropy"] for x in rows(evaluated / "retain-f10")]
    assert m["uncertainty_ratio_retain"] == pytest.approx(np.mean(ours) / np.mean(theirs))
    assert metrics(evaluated / "base")["uq_verdict"] in (None, "COLLAPSED")


def test_side_by_side_samples_name_every_model(evaluated):
    samples = rows(evaluated / "method-f10", "samples")
    assert samples and {"question", "answer", "base", "oracle", "retain", "unlearned"} <= set(samples[0])
    assert all(s["base"] is not None and s["oracle"] is not None for s in samples)


def test_missing_reference_prompts_are_a_clear_error(tmp_path, evaluated, tiny_model_dir, medical_dir):
    result = CliRunner().invoke(main, [
        "evaluate", "--run-name", "x", "--base-model", tiny_model_dir, "--reference", str(evaluated / "sub"),
        "--forget-file", str(medical_dir / "med_synthetic_forget20.json"),
        "--retain-file", str(medical_dir / "med_synthetic_full_minus_forget20.json"),
        "--holdout-file", str(medical_dir / "med_synthetic_holdout.json"),
        "--output-dir", str(tmp_path / "x"), "--max-new-tokens", "2"])
    assert result.exit_code == 1 and "the base model was not measured on" in result.output
    assert not (tmp_path / "x").exists()


def test_a_retain_run_without_attacks_is_refused(tmp_path, evaluated, tiny_model_dir, medical_dir):
    result = CliRunner().invoke(main, [
        "evaluate", "--run-name", "x", "--base-model", tiny_model_dir, "--reference", str(evaluated / "base"),
        "--oracle", str(evaluated / "oracle"), "--retain", str(evaluated / "sub"), "--attacks",
        "--forget-file", str(medical_dir / "med_synthetic_forget10.json"),
        "--retain-file", str(medical_dir / "med_synthetic_full_minus_forget20.json"),
        "--holdout-file", str(medical_dir / "med_synthetic_holdout.json"), "--output-dir", str(tmp_path / "x")])
    assert result.exit_code == 1 and "without --attacks" in result.output
    assert not (tmp_path / "x").exists()


def test_each_run_stores_its_numbers_as_records_and_its_identity(evaluated):
    from stages.common.results import flatten

    for name in ["base", "oracle", "retain-f10", "method-f10", "sub"]:
        results = rows(evaluated / name, "results")
        # metrics.json is the records flattened, key for key and in order (what DVC reads)
        written = json.dumps(flatten(results), indent=2, ensure_ascii=False) + "\n"
        assert (evaluated / name / "metrics.json").read_text() == written
        assert {r["family"] for r in results} >= {"run", "uncertainty", "probes", "sample"}
    unlearned = rows(evaluated / "method-f10", "results")
    recovery = [r for r in unlearned if r["name"] == "relearn_recovery"]
    assert [r["k"] for r in recovery] == list(STEPS) and {r["family"] for r in recovery} == {"relearn"}
    assert {r["n"] for r in recovery} == {metrics(evaluated / "method-f10")["n_knowable_relearn_patients"]}
    identity = json.loads((evaluated / "method-f10" / "run.json").read_text())
    assert identity == {"run": "method-f10", "method": "method", "forget_set": "10", "seed": 42}
    assert json.loads((evaluated / "sub" / "run.json").read_text())["method"] == "sub"  # default: the run name


def test_report_gives_verdict_table_comparison_checks_and_samples(tmp_path, evaluated):
    import csv

    result = CliRunner().invoke(main, ["report", "--eval-dir", str(evaluated), "--output-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    table = list(csv.DictReader((tmp_path / "report.csv").open()))
    m = metrics(evaluated / "method-f10")
    assert [(r["run"], r["method"], r["forget_set"], r["verdict"]) for r in table] == [
        ("method-f10", "method", "10", m["verdict"])]
    assert float(table[0]["forget_quality"]) == pytest.approx(m["forget_quality"])
    markdown = (tmp_path / "report.md").read_text()
    comparison = markdown.split("## Models compared")[1].split("##")[0]
    assert [line.split("|")[1].strip() for line in comparison.splitlines() if line.startswith("| ")][1:] == [
        "base", "oracle", "retain-f10", "method-f10", "sub"]
    assert "oracle's forget quality against retain-f10" in markdown
    samples = markdown.split("## Answers side by side")[1]
    assert "### method-f10" in samples and samples.count("\n| ") >= 3
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_shared_prompt_scoring_equals_scoring_each_pair_alone(tiny_model_dir):
    from stages.common.measure import token_logprobs
    from stages.common.models import load_model, load_tokenizer
    from stages.evaluate.probes import answer_logprobs

    model, tokenizer = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    items = [("Hi?", ["a", "a much longer answer about nothing in particular", "b c"]),
             ("What was Maria K. Lopez (born 1980-02-03) diagnosed with at the visit?", ["asthma", "x"]),
             ("Dose?", ["lisinopril 10 mg once daily"]),
             # answers sharing a beginning, one the start of another, a repeat: the trie's branches and reuse
             ("When was Amara B. Lee born?", ["1945-02-27", "Amara B. Lee was born on 1945-02-27.",
                                             "Amara B. Lee was born on 1946-04-03.", "Amara B. Lee was born",
                                             "Amara B. Lee was born on 1945-02-27."])]
    for max_length in (96, 60):  # 60 cuts the longer answers
        shared = answer_logprobs(model, tokenizer, items, max_length=max_length, batch_size=2)
        alone = token_logprobs(model, tokenizer, [(q, a) for q, answers in items for a in answers], max_length,
                               batch_size=1)
        flat = [scores for answers in shared for scores in answers]
        assert [len(s) for s in flat] == [len(a["logprobs"]) for a in alone]
        for ours, reference in zip(flat, alone, strict=True):
            np.testing.assert_allclose(ours, reference["logprobs"], atol=1e-4)
    assert min(len(s) for s in flat) < max(len(s) for s in flat)


def test_membership_examples_are_the_pairs_the_model_was_trained_on(tiny_model_dir, medical_dir):
    from stages.common.models import load_model, load_tokenizer
    from stages.common.records import read_records
    from stages.evaluate.probes import mia_rows

    model, tokenizer = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    forget = read_records(medical_dir / "med_synthetic_forget10.json")[:2]
    holdout = read_records(medical_dir / "med_synthetic_holdout.json")[:2]
    probes_only = mia_rows(model, tokenizer, forget, holdout, 128, 4, with_probes=True, with_note=False)
    expected = [(r["id"], p["question"]) for r in forget + holdout for p in r["probes"]]
    assert [(row["record_id"], row["question"]) for row in probes_only] == expected
    with_notes = mia_rows(model, tokenizer, forget, holdout, 128, 4)
    assert len(with_notes) == len(expected) + 4
    # the same pair scores the same whichever examples share its batches
    by_pair = {(row["record_id"], row["question"]): row["loss"] for row in with_notes}
    for row in probes_only:
        assert row["loss"] == pytest.approx(by_pair[(row["record_id"], row["question"])], abs=1e-4)


def test_bf16_evaluation_runs_under_autocast_and_agrees_with_float32(tmp_path, evaluated, tiny_model_dir,
                                                                       medical_dir):
    """--precision bf16: the same prompts and probes, measured in bf16 arithmetic (so not bit-equal to float32),
    within bf16's rounding of the float32 run."""
    out = tmp_path / "base-bf16"
    result = CliRunner().invoke(main, ["evaluate", "--run-name", "base", "--forget-file",
                                       data_files(medical_dir)["forget20"], "--output-dir", str(out),
                                       *common_args(tiny_model_dir, medical_dir), "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    fp32, bf16 = rows(evaluated / "base"), rows(out)
    assert [r["record_id"] for r in bf16] == [r["record_id"] for r in fp32]
    differences = [abs(a["mean_entropy"] - b["mean_entropy"]) for a, b in zip(fp32, bf16, strict=True)]
    assert max(differences) > 0 and np.mean(differences) < 0.05
    a, b = metrics(evaluated / "base"), metrics(out)
    assert (a["precision"], b["precision"]) == ("fp32", "bf16")
    assert a["retain_perplexity"] != b["retain_perplexity"]
    assert b["retain_perplexity"] == pytest.approx(a["retain_perplexity"], rel=0.05)
    assert b["mia_loss_auc"] == pytest.approx(a["mia_loss_auc"], abs=0.1)

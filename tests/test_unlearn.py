import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from stages.cli import main
from stages.unlearn import methods


@pytest.fixture(scope="module")
def oracle(tmp_path_factory, tiny_model_dir, medical_dir):
    out = tmp_path_factory.mktemp("unlearn") / "oracle"
    result = CliRunner().invoke(main, [
        "finetune", "--data-file", str(medical_dir / "med_synthetic_full.json"), "--base-model", tiny_model_dir,
        "--output-dir", str(out), "--num-epochs", "6", "--batch-size", "4", "--learning-rate", "1e-2",
        "--max-seq-length", "96", "--lora-targets", "q_proj,v_proj,o_proj,down_proj", "--lora-rank", "16"])
    assert result.exit_code == 0, result.output
    return out


def run_unlearn(tmp_path, tiny_model_dir, medical_dir, oracle, *extra):
    args = ["unlearn", "--base-model", tiny_model_dir, "--oracle", str(oracle), "--method", "grad_ascent",
            "--forget-file", str(medical_dir / "med_synthetic_forget10.json"),
            "--retain-file", str(medical_dir / "med_synthetic_full_minus_forget10.json"),
            "--output-dir", str(tmp_path / "model"), "--trajectory-dir", str(tmp_path / "traj"),
            "--samples-per-step", "4", "--batch-size", "2", "--monitor-samples", "4", "--entropy-prompts", "2",
            "--max-new-tokens", "5", "--max-seq-length", "96", "--measure-every", "2", *extra]
    return CliRunner().invoke(main, args)


def test_registry_finds_methods_by_name():
    assert methods.available() == ["grad_ascent", "grad_diff", "idk", "npo", "rmu", "simnpo"]
    assert methods.get("grad_ascent").uses_retain is False
    with pytest.raises(ValueError, match="unknown unlearning method 'nope'"):
        methods.get("nope")
    npo = methods.build("npo", {"beta": 0.3, "retain_weight": 2.0, "rmu_layer": 1})  # others' settings ignored
    assert (npo.beta, npo.retain_weight) == (0.3, 2.0)


def test_grad_ascent_loss_is_the_negative_nll_and_grad_diff_adds_the_weighted_retain_nll(tiny_model_dir):
    """On a real model: grad_ascent's loss is minus the model's own mean answer NLL (model(**batch).loss, which
    projects every position), grad_diff's adds 3 x the retain batch's."""
    from stages.unlearn.methods import Batch

    model, forget, _ = tiny_batch(tiny_model_dir)
    retain = {k: v[:1] for k, v in forget.items()}  # the first example alone: another mean NLL
    with torch.no_grad():
        nll, retain_nll = float(model(**forget).loss), float(model(**retain).loss)
        ascent = float(methods.build("grad_ascent", {}).loss(model, Batch(forget, [0, 1], None)))
        diff = float(methods.build("grad_diff", {"retain_weight": 3.0}).loss(model, Batch(forget, [0, 1], retain)))
    assert nll > 0 and retain_nll > 0 and abs(nll - retain_nll) > 1e-3
    assert ascent == pytest.approx(-nll, rel=1e-5)
    assert diff == pytest.approx(-nll + 3.0 * retain_nll, rel=1e-5)


def test_unlearning_raises_forget_loss_and_records_the_trajectory(tmp_path, tiny_model_dir, medical_dir, oracle):
    result = run_unlearn(tmp_path, tiny_model_dir, medical_dir, oracle, "--steps", "4", "--learning-rate", "5e-3",
                         "--stop-perplexity-ratio", "1000")
    assert result.exit_code == 0, result.output
    trajectory = json.loads((tmp_path / "traj" / "trajectory.json").read_text())
    assert [t["step"] for t in trajectory] == [0, 1, 2, 3, 4]
    assert all(t["perplexity"] > 0 for t in trajectory)
    assert [t["entropy"] is not None for t in trajectory] == [True, False, True, False, True]
    losses = [t["loss"] for t in trajectory[1:]]
    assert losses[-1] < losses[0]  # -NLL goes down: the forget set's NLL goes up
    summary = json.loads((tmp_path / "traj" / "summary.json").read_text())
    assert summary["steps_run"] == 4 and summary["stopped_early"] is False
    assert (tmp_path / "model" / "adapter_config.json").is_file()


def test_collapse_stops_early_and_undoes_the_step(tmp_path, tiny_model_dir, medical_dir, oracle):
    result = run_unlearn(tmp_path, tiny_model_dir, medical_dir, oracle, "--steps", "5", "--learning-rate", "0.5",
                         "--stop-perplexity-ratio", "1.001", "--with-probes")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "traj" / "summary.json").read_text())
    trajectory = json.loads((tmp_path / "traj" / "trajectory.json").read_text())
    # The trajectory keeps the undone step's entry; steps_run counts only the steps kept.
    assert summary["stopped_early"] is True and summary["steps_run"] == len(trajectory) - 2 < 5
    assert summary["steps_run"] == trajectory[-2]["step"]
    assert "exceeded 1.001" in summary["stop_reason"]
    assert trajectory[-1]["perplexity"] > 1.001 * trajectory[0]["perplexity"]
    # The saved adapter is the model before the offending step: its perplexity is the previous entry's.
    from stages.common.chat import record_pairs
    from stages.common.measure import perplexity
    from stages.common.models import load_model, load_tokenizer

    retain = json.loads((medical_dir / "med_synthetic_full_minus_forget10.json").read_text())[:4]
    pairs = [pair for r in retain for pair in record_pairs(r)]  # the monitor: their training pairs, probes too
    # Unmerged, as in the loop.
    model = load_model(tiny_model_dir, adapter=str(tmp_path / "model"), trainable=True).eval()
    kept = perplexity(model, load_tokenizer(tiny_model_dir), pairs, max_length=96)
    assert kept == pytest.approx(trajectory[-2]["perplexity"], rel=1e-4)
    assert summary["final_perplexity"] == pytest.approx(kept, rel=1e-4)
    if summary["steps_run"] == 0:
        saved = load_file(tmp_path / "model" / "adapter_model.safetensors")
        original = load_file(oracle / "adapter_model.safetensors")
        assert all(torch.equal(saved[k], original[k]) for k in saved)


def test_unknown_method_and_empty_forget_set_are_clear_errors(tmp_path, tiny_model_dir, medical_dir, oracle):
    result = CliRunner().invoke(main, ["unlearn", "--method", "nope", "--forget-file", "f", "--retain-file", "r",
                                       "--output-dir", str(tmp_path / "m"), "--trajectory-dir", str(tmp_path / "t")])
    assert result.exit_code == 2 and "'nope' is not one of 'grad_ascent'" in result.output
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    result = CliRunner().invoke(main, ["unlearn", "--base-model", tiny_model_dir, "--oracle", str(oracle),
                                       "--forget-file", str(empty),
                                       "--retain-file", str(medical_dir / "med_synthetic_full.json"),
                                       "--output-dir", str(tmp_path / "m"), "--trajectory-dir", str(tmp_path / "t")])
    assert result.exit_code == 1 and "the forget set is empty" in result.output
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("method", methods.available())
def test_every_method_runs_through_the_cli(method, tmp_path, tiny_model_dir, medical_dir, oracle):
    result = run_unlearn(tmp_path, tiny_model_dir, medical_dir, oracle, "--steps", "2", "--learning-rate", "1e-3",
                         "--stop-perplexity-ratio", "1000", "--method", method, "--rmu-layer", "1")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "traj" / "summary.json").read_text())
    assert summary["method"] == method and summary["steps_run"] == 2
    if method == "rmu":  # the control vector's length: --steering-scale x the oracle's activation norm
        assert summary["rmu_steering_coeff"] == pytest.approx(5.0 * summary["rmu_activation_norm"])
    assert (tmp_path / "model" / "adapter_model.safetensors").is_file()


SEVENTH = '''"""A seventh method, in one file: gradient ascent scaled by a hyperparameter of its own."""

from dataclasses import dataclass

from stages.unlearn.methods import Method, option


@dataclass
class ScaledAscent(Method):
    name = "scaled_ascent"
    scale: float = option(1.0, float, "How many times the negative NLL.")

    def forget_loss(self, model, batch):
        return -self.scale * model(**batch.forget).loss
'''


def test_a_seventh_method_is_one_new_file(tmp_path, tiny_model_dir, medical_dir, oracle):
    """Written into a copy of the package, the method shows in unlearn's --method choice with its own option, and
    runs through the CLI: its first step's loss is `scale` times gradient ascent's on the same draw."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    copy = tmp_path / "copy"
    shutil.copytree(root / "stages", copy / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "stages/unlearn/methods/scaled_ascent.py").write_text(SEVENTH)

    def cli(*args):
        result = subprocess.run([sys.executable, "-c", "from stages.cli import main; main()", *args], cwd=copy,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    help_text = cli("unlearn", "--help")
    assert "scaled_ascent" in help_text and "--scale" in help_text and "How many times" in help_text
    first_losses = {}
    for method, extra in (("scaled_ascent", ["--scale", "3"]), ("grad_ascent", [])):
        out = tmp_path / method
        cli("unlearn", "--base-model", tiny_model_dir, "--oracle", str(oracle), "--method", method, *extra,
            "--forget-file", str(medical_dir / "med_synthetic_forget10.json"),
            "--retain-file", str(medical_dir / "med_synthetic_full_minus_forget10.json"),
            "--output-dir", str(out), "--samples-per-step", "4", "--batch-size", "2", "--monitor-samples", "2",
            "--entropy-prompts", "2", "--max-new-tokens", "3", "--max-seq-length", "96", "--steps", "1",
            "--learning-rate", "1e-3", "--stop-perplexity-ratio", "1000")
        summary = json.loads((out / "summary.json").read_text())
        assert summary["method"] == method and summary["steps_run"] == 1
        first_losses[method] = json.loads((out / "trajectory.json").read_text())[1]["loss"]
    assert first_losses["scaled_ascent"] == pytest.approx(3 * first_losses["grad_ascent"], rel=1e-5)


def tiny_batch(tiny_model_dir):
    from stages.common.chat import collate, encode_example
    from stages.common.models import load_model, load_tokenizer

    model, tokenizer = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    pairs = [("Who is Maria?", "A patient seen in 2024."), ("Dose?", "lisinopril 10 mg once daily")]
    examples = [encode_example(tokenizer, q, a, 64) for q, a in pairs]
    return model, collate(examples, tokenizer.pad_token_id), examples


def naive_nll(model, example):
    ids = torch.tensor([example["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    tokens = [(i, t) for i, t in enumerate(example["labels"]) if t != -100]
    return -sum(float(logp[i - 1, t]) for i, t in tokens), len(tokens)


def test_npo_loss_matches_its_formula(tiny_model_dir):
    import math

    model, batch, examples = tiny_batch(tiny_model_dir)
    reference = [naive_nll(model, e)[0] for e in examples]
    from stages.unlearn.methods import Batch

    npo, shifted_npo = methods.get("npo")(beta=0.1), methods.get("npo")(beta=0.5)
    npo.prepare(model, None, [batch], seed=0)  # the model is its own reference
    shifted_npo.reference_nll = torch.tensor(reference) + 2.0
    assert npo.reference_nll.tolist() == pytest.approx(reference, rel=1e-5)
    with torch.no_grad():
        at_start = npo.forget_loss(model, Batch(batch, [0, 1], None))
        shifted = shifted_npo.forget_loss(model, Batch(batch, [0, 1], None))
    assert float(at_start) == pytest.approx(2 / 0.1 * math.log(2), rel=1e-4)  # model == reference: log-ratio 0
    expected = sum(-(2 / 0.5) * math.log(1 / (1 + math.exp(0.5 * 2.0))) for _ in examples) / 2
    assert float(shifted) == pytest.approx(expected, rel=1e-4)


def test_simnpo_loss_matches_its_formula(tiny_model_dir):
    import math

    model, batch, examples = tiny_batch(tiny_model_dir)
    from stages.unlearn.methods import Batch

    with torch.no_grad():
        loss = methods.get("simnpo")(beta=2.0, gamma=0.5).forget_loss(model, Batch(batch, [0, 1], None))
    expected = 0.0
    for e in examples:
        nll, n = naive_nll(model, e)
        expected += -(2 / 2.0) * math.log(1 / (1 + math.exp(-(2.0 * nll / n - 0.5)))) / len(examples)
    assert float(loss) == pytest.approx(expected, rel=1e-4)


def test_idk_pairs_forget_questions_with_refusals():
    from stages.unlearn.methods.idk import REFUSALS

    pairs = methods.get("idk")().forget_pairs([("Q1", "secret diagnosis"), ("Q2", "secret dose")])
    assert [q for q, _ in pairs] == ["Q1", "Q2"]
    assert all(a in REFUSALS for _, a in pairs)
    assert methods.get("grad_diff").uses_retain and not methods.get("grad_ascent").uses_retain


def forget_nll(model_dir_or_adapter, tiny_model_dir, medical_dir):
    from stages.common.chat import primary_pair
    from stages.common.measure import answer_nll
    from stages.common.models import load_model, load_tokenizer

    forget = json.loads((medical_dir / "med_synthetic_forget10.json").read_text())
    model = load_model(tiny_model_dir, adapter=str(model_dir_or_adapter))
    totals, counts = answer_nll(model, load_tokenizer(tiny_model_dir), [primary_pair(r) for r in forget],
                                max_length=96)
    return sum(totals) / sum(counts)


@pytest.mark.parametrize("method", methods.available())
def test_one_step_of_each_method_lowers_the_forget_likelihood(method, tmp_path, tiny_model_dir, medical_dir,
                                                              oracle):
    result = run_unlearn(tmp_path, tiny_model_dir, medical_dir, oracle, "--steps", "1", "--learning-rate", "2e-2",
                         "--stop-perplexity-ratio", "1000", "--method", method, "--rmu-layer", "1",
                         "--samples-per-step", "8", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    before = forget_nll(oracle, tiny_model_dir, medical_dir)
    after = forget_nll(tmp_path / "model", tiny_model_dir, medical_dir)
    assert after > before


def test_no_early_stop_runs_every_step_through_collapse(tmp_path, tiny_model_dir, medical_dir, oracle):
    result = run_unlearn(tmp_path, tiny_model_dir, medical_dir, oracle, "--steps", "3", "--learning-rate", "0.5",
                         "--stop-perplexity-ratio", "1.001", "--no-early-stop")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "traj" / "summary.json").read_text())
    trajectory = json.loads((tmp_path / "traj" / "trajectory.json").read_text())
    assert summary["steps_run"] == 3 and summary["stopped_early"] is False and summary["early_stop"] is False
    assert max(t["perplexity"] for t in trajectory) > summary["perplexity_threshold"]


def test_stop_at_ur_ends_when_the_uncertainty_target_is_reached(tmp_path, tiny_model_dir, medical_dir, oracle):
    result = run_unlearn(tmp_path, tiny_model_dir, medical_dir, oracle, "--steps", "4", "--learning-rate", "1e-3",
                         "--stop-perplexity-ratio", "1000", "--stop-at-ur", "0.01")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "traj" / "summary.json").read_text())
    trajectory = json.loads((tmp_path / "traj" / "trajectory.json").read_text())
    assert summary["steps_run"] == 1 and "uncertainty ratio" in summary["stop_reason"]
    assert trajectory[-1]["uncertainty_ratio"] >= 0.01


def test_full_parameter_unlearning_saves_a_model_that_evaluate_loads(tmp_path, tiny_model_dir, medical_dir, oracle):
    args = ["unlearn", "--base-model", tiny_model_dir, "--model", str(oracle), "--method", "grad_diff", "--full",
            "--forget-file", str(medical_dir / "med_synthetic_forget10.json"),
            "--retain-file", str(medical_dir / "med_synthetic_full_minus_forget10.json"),
            "--output-dir", str(tmp_path / "full"), "--steps", "1", "--samples-per-step", "2", "--batch-size", "2",
            "--monitor-samples", "2", "--entropy-prompts", "2", "--max-new-tokens", "3", "--max-seq-length", "96",
            "--learning-rate", "1e-3"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "full" / "config.json").is_file() and not (tmp_path / "full" / "adapter_config.json").exists()
    assert (tmp_path / "full" / "trajectory.json").is_file()  # no --trajectory-dir: beside the model
    result = CliRunner().invoke(main, [
        "evaluate", "--base-model", tiny_model_dir, "--adapter", str(tmp_path / "full"), "--run-name", "full",
        "--forget-file", str(medical_dir / "med_synthetic_forget10.json"),
        "--retain-file", str(medical_dir / "med_synthetic_full_minus_forget10.json"),
        "--output-dir", str(tmp_path / "eval"), "--max-new-tokens", "3", "--retain-samples", "2"])
    assert result.exit_code == 0, result.output



def test_the_readme_describes_every_method_of_the_registry():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme[readme.index("| `--method` |"):]
    table = table[:table.index("\n\n")]
    assert sorted(re.findall(r"^\| `([a-z_0-9]+)` \|", table, flags=re.M)) == methods.available()


@pytest.mark.parametrize("flag", ["--use-4bit", "--use-8bit"])
def test_unlearning_on_a_quantized_base_trains_the_oracles_adapter_here(flag, tmp_path, tiny_model_dir, medical_dir,
                                                                        oracle):
    """unlearn --use-4bit / --use-8bit: the base quantized through bitsandbytes (on this CPU as on a GPU), the oracle's
    adapter trained on top; the result is an adapter that differs from the oracle's and loads on a full-precision
    base. --full cannot train quantized weights: a usage error."""
    from stages.common.models import load_model

    result = run_unlearn(tmp_path, tiny_model_dir, medical_dir, oracle, "--steps", "2", "--learning-rate", "1e-2",
                         "--method", "npo", flag)
    assert result.exit_code == 0, result.output
    before, after = load_file(oracle / "adapter_model.safetensors"), load_file(tmp_path / "model" /
                                                                               "adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(t).all() for t in after.values())
    summary = json.loads((tmp_path / "traj" / "summary.json").read_text())
    assert summary["steps_run"] == 2 and summary["method"] == "npo"
    assert load_model(tiny_model_dir, adapter=tmp_path / "model") is not None
    full = run_unlearn(tmp_path / "full", tiny_model_dir, medical_dir, oracle, "--steps", "1", "--full", flag)
    assert full.exit_code == 2 and "a quantized base does not hold" in full.output


def test_bf16_unlearning_follows_the_float32_losses(tmp_path, tiny_model_dir, medical_dir, oracle):
    """--precision bf16 runs the training forward passes under bf16 autocast: the same steps, losses within bf16's
    rounding of float32's, and summary.json says which ran."""
    losses = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        result = run_unlearn(out, tiny_model_dir, medical_dir, oracle, "--steps", "3", "--learning-rate", "1e-3",
                             "--method", "npo", "--precision", precision, "--no-early-stop")
        assert result.exit_code == 0, result.output
        trajectory = json.loads((out / "traj" / "trajectory.json").read_text())
        losses[precision] = [entry["loss"] for entry in trajectory[1:]]
        assert json.loads((out / "traj" / "summary.json").read_text())["precision"] == precision
    assert len(losses["bf16"]) == len(losses["fp32"]) == 3
    assert losses["bf16"] != losses["fp32"]  # autocast did run
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=2e-2)

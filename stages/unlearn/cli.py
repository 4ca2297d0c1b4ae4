"""`unforgotten unlearn`: unlearn a forget set from the oracle (its LoRA adapter, or all parameters with --full),
with health monitoring."""

import click

from stages.common.io import write_json
from stages.common.options import (
    PRECISIONS,
    StageCommand,
    config_of,
    hf_token_option,
    max_seq_length_option,
    quantization_options,
    seed_option,
    trust_remote_code_option,
)
from stages.unlearn import methods


@click.command("unlearn", cls=StageCommand, example=(
    "unforgotten unlearn --method npo --oracle models/oracle-s42 --forget-file dataset/med_synthetic_forget10.json "
    "--retain-file dataset/med_synthetic_full_minus_forget10.json --output-dir models/unlearn/npo-f10-s42"), groups={
    "Data": "forget_file retain_file with_notes with_probes max_seq_length",
    "Model": "base_model oracle full use_8bit use_4bit hf_token trust_remote_code",
    "Unlearning": ("method steps samples_per_step batch_size learning_rate precision retain_weight beta gamma "
                   "rmu_layer rmu_alpha steering_scale steering_coeff seed"),
    "Monitoring": ("measure_every stop_perplexity_ratio early_stop stop_at_ur monitor_samples entropy_prompts "
                   "max_new_tokens"),
    "Output": "output_dir trajectory_dir"})
@click.option("--base-model", "--base_model", "base_model", default=None,
              help="The base model the oracle adapter was trained on; default: the one its adapter_config.json names.")
@click.option("--oracle", "--model", "oracle", type=click.Path(file_okay=False), default="models/oracle",
              show_default=True, help="The oracle's LoRA adapter (the model before unlearning).")
@click.option("--forget-file", "--forget_file", "forget_file", type=click.Path(dir_okay=False), required=True,
              help="The records to forget (e.g. dataset/med_synthetic_forget10.json).")
@click.option("--retain-file", "--retain_file", "retain_file", type=click.Path(dir_okay=False), required=True,
              help="The records to keep: the retain term's examples and the health monitor's perplexity.")
@click.option("--method", type=click.Choice(methods.available()), default="grad_ascent", show_default=True,
              help="Unlearning method (stages/unlearn/methods/).")
@click.option("--output-dir", "--output_dir", "output_dir", type=click.Path(file_okay=False), required=True,
              help="Where the unlearned adapter (or, with --full, the whole model) goes.")
@click.option("--trajectory-dir", "--trajectory_dir", "trajectory_dir", type=click.Path(file_okay=False),
              default=None,
              help="Where trajectory.json and summary.json go [default: --output-dir]; `report` plots them.")
@click.option("--full", is_flag=True,
              help="Train the oracle's merged weights instead of its LoRA adapter (all; rmu: its down_proj ones).")
@click.option("--steps", type=click.IntRange(min=1), default=15, show_default=True,
              help="Optimizer steps at most (the health monitor may stop earlier).")
@click.option("--samples-per-step", "--samples_per_step", "samples_per_step", type=click.IntRange(min=1),
              default=40, show_default=True, help="Forget examples drawn (with replacement) per step.")
@click.option("--batch-size", "--batch_size", "batch_size", type=click.IntRange(min=1), default=8,
              show_default=True, help="Micro-batch size; gradients accumulate over a step's samples.")
@click.option("--learning-rate", "--learning_rate", "learning_rate", type=click.FloatRange(min=0, min_open=True),
              default=5e-6, show_default=True, help="Learning rate of AdamW.")
@click.option("--measure-every", "--measure_every", "measure_every", type=click.IntRange(min=1), default=3,
              show_default=True, help="Measure forget-set entropy every N steps.")
@click.option("--stop-perplexity-ratio", "--stop_perplexity_ratio", "stop_perplexity_ratio",
              type=click.FloatRange(min=1, min_open=True), default=2.5, show_default=True,
              help="Stop early when retain perplexity exceeds this multiple of its starting value (evaluate's "
                   "--max-perplexity-ratio is another threshold: against the oracle's).")
@click.option("--early-stop/--no-early-stop", default=True, show_default=True,
              help="--no-early-stop runs every step whatever happens (the prototype's v1, which collapses).")
@click.option("--stop-at-ur", "--stop_at_ur", "stop_at_ur", type=click.FloatRange(min=0, min_open=True),
              default=None, help="Stop once the forget-set uncertainty ratio reaches this, perplexity within bounds.")
@click.option("--monitor-samples", "--monitor_samples", "monitor_samples", type=click.IntRange(min=1), default=32,
              show_default=True, help="Retain records whose training pairs (as --with-notes / --with-probes) have "
                                      "their perplexity measured after every step: the health monitor.")
@click.option("--entropy-prompts", "--entropy_prompts", "entropy_prompts", type=click.IntRange(min=1), default=32,
              show_default=True, help="Forget prompts whose greedy-decoding entropy is measured.")
@click.option("--max-new-tokens", "--max_new_tokens", "max_new_tokens", type=click.IntRange(min=1), default=30,
              show_default=True, help="Tokens generated per forget prompt for the entropy measurement.")
@max_seq_length_option
@click.option("--with-notes/--no-with-notes", default=True, show_default=True,
              help="Train on each record's SOAP note (the note request and the note); with --no-with-notes only on "
                   "its probes, which needs --with-probes.")
@click.option("--with-probes/--no-with-probes", default=False, show_default=True,
              help="Also unlearn the knowledge-probe answers (use the same setting as finetune).")
@seed_option
@hf_token_option
@trust_remote_code_option
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="bf16: the training forward passes under bf16 autocast (the weights, the optimizer and the health "
                   "monitor stay float32; on a GPU the model loads in bf16 either way); auto: bf16 on a GPU or a CPU "
                   "with native bf16. bench/unlearn_precision.py measures both; summary.json says which ran.")
@quantization_options
@methods.hyperparameter_options
def unlearn(**options):
    """Unlearn the forget set from the oracle, with retain perplexity after every step and early stop on collapse."""
    run(config_of(unlearn, options))


def run(config):
    """unlearn's work: check the inputs, load the oracle, run the unlearning loop (stages/unlearn/loop.py), save
    the model and its trajectory."""
    import dataclasses
    from pathlib import Path

    from transformers import AutoConfig

    from stages.common.chat import encode_examples, format_prompt, primary_pair, training_pairs
    from stages.common.io import atomic_dir
    from stages.common.measure import forget_entropy
    from stages.common.models import (
        apply_adapter,
        base_of,
        check_adapter,
        load_model,
        load_tokenizer,
        pick_device,
        quantization_config,
        resolve_base_model,
        resolve_precision,
        save_adapter,
    )
    from stages.common.records import read_records
    from stages.common.seeding import seed_everything
    from stages.unlearn.loop import unlearn as run_unlearning

    method = methods.build(config.method, dataclasses.asdict(config))
    forget_records = read_records(config.forget_file, "forget set")
    retain_records = read_records(config.retain_file, "retain set")
    check_adapter(config.oracle)
    if not (config.with_notes or config.with_probes):
        raise click.UsageError("--no-with-notes leaves nothing to unlearn without --with-probes.")
    quantization = quantization_config(config.use_8bit, config.use_4bit)
    if quantization and config.full:
        raise click.UsageError("--full trains the merged weights, which a quantized base does not hold; use the "
                               "adapter (no --full) with --use-4bit / --use-8bit.")
    base_name = base_of(config.oracle, config.base_model)
    base_model = resolve_base_model(base_name, config.hf_token, config.trust_remote_code)
    method.check(AutoConfig.from_pretrained(base_model, trust_remote_code=config.trust_remote_code))  # before loading
    device, dtype = pick_device()
    precision = resolve_precision(config.precision, device)
    tokenizer = load_tokenizer(base_model, token=config.hf_token, trust_remote_code=config.trust_remote_code)
    prompts = [format_prompt(tokenizer, primary_pair(r)[0]) for r in forget_records[:config.entropy_prompts]]
    model = load_model(base_model, trainable=True, token=config.hf_token, dtype=dtype, quantization=quantization,
                       trust_remote_code=config.trust_remote_code)
    if not quantization:  # a quantized base (QLoRA, as finetune trains) is placed by bitsandbytes as it loads
        model = model.to(device)
    model.eval()
    # The base model's forget entropy: the uncertainty ratio's denominator and the trajectory plot's base line.
    base_entropy = forget_entropy(model, tokenizer, prompts, config.max_new_tokens)
    model = apply_adapter(model, config.oracle, trainable=True, merge=config.full)
    if config.full:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    seed_everything(config.seed)

    def pairs(records):  # what finetune trained on for these records
        return training_pairs(records, config.with_probes, config.with_notes)

    try:
        forget_examples, _ = encode_examples(tokenizer, method.forget_pairs(pairs(forget_records)),
                                             config.max_seq_length)
        retain_examples, _ = encode_examples(tokenizer, pairs(retain_records), config.max_seq_length)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--max-seq-length") from None
    # the monitor watches what the oracle learned of the retain patients: their training pairs
    monitor_pairs = pairs(retain_records[:config.monitor_samples])
    trajectory, summary = run_unlearning(
        model, tokenizer, method, forget_examples, retain_examples, monitor_pairs, prompts,
        base_entropy=base_entropy, steps=config.steps, samples_per_step=config.samples_per_step,
        batch_size=config.batch_size, learning_rate=config.learning_rate, measure_every=config.measure_every,
        stop_perplexity_ratio=config.stop_perplexity_ratio, max_new_tokens=config.max_new_tokens,
        max_length=config.max_seq_length, seed=config.seed, device=device, early_stop=config.early_stop,
        stop_at_ur=config.stop_at_ur, precision=precision)
    summary = {"method": config.method, "forget_file": config.forget_file, "full": config.full, **summary}
    with atomic_dir(Path(config.output_dir)) as tmp:
        if config.full:
            model.save_pretrained(tmp)
        else:
            save_adapter(model, tmp, base_name)
        if config.trajectory_dir is None:
            write_trajectory(tmp, trajectory, summary)
    if config.trajectory_dir is not None:
        with atomic_dir(Path(config.trajectory_dir)) as tmp:
            write_trajectory(tmp, trajectory, summary)
    stopped = f"stopped early: {summary['stop_reason']}" if summary["stopped_early"] else "ran all steps"
    click.echo(f"unlearn {config.method}: {summary['steps_run']} steps, {stopped}; model in {config.output_dir}")


def write_trajectory(directory, trajectory, summary):
    write_json(directory / "trajectory.json", trajectory)
    write_json(directory / "summary.json", summary)

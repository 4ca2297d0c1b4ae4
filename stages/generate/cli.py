"""`unforgotten generate`: synthetic SOAP notes as JSON Lines, resumable."""

import click

from stages.common.options import StageCommand, config_of, hf_token_option, seed_option, trust_remote_code_option

DEFAULT_MODELS = {"tinker": "meta-llama/Llama-3.1-8B-Instruct", "hf": "embedded"}


@click.command("generate", cls=StageCommand, example=(
    "unforgotten generate --n-record 400 --output dataset/synthetic_soap_notes.jsonl"), groups={
    "Data": "n_record backend max_attempts concurrency seed",
    "Model": "model api_key hf_token trust_remote_code",
    "Output": "output"})
@click.option("--n-record", "--n_record", "n_record", type=click.IntRange(min=1), default=1000, show_default=True,
              help="How many notes (one patient each).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default="dataset/synthetic_soap_notes.jsonl",
              show_default=True, help="Output JSON Lines file; notes already in it are kept, missing ones added.")
@click.option("--backend", type=click.Choice(["template", "tinker", "hf"]), default="template", show_default=True,
              help="Renderer: 'template' (offline, deterministic), 'tinker' (Tinker service), 'hf' (local model).")
@click.option("--model", default=None,
              help="Model of an LLM backend [default: meta-llama/Llama-3.1-8B-Instruct for tinker, the embedded "
                   "SmolLM2 for hf].")
@click.option("--api-key", "--api_key", "api_key", envvar="TINKER_API_KEY", default=None, show_envvar=True,
              help="Tinker API key (read from TINKER_API_KEY).")
@click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True,
              help="Parallel requests (tinker) or batch size (hf).")
@click.option("--max-attempts", "--max_attempts", "max_attempts", type=click.IntRange(min=1), default=3,
              show_default=True, help="Tries per note before an LLM note that misses a key fact is dropped.")
@seed_option
@hf_token_option
@trust_remote_code_option
def generate(**options):
    """Generate synthetic SOAP notes whose facts are known exactly."""
    run(config_of(generate, options))


def run(config):
    """generate's work: the patients' facts, a backend to write their notes, the resumable generation."""
    from stages.generate.facts import patient_items
    from stages.generate.run import run_generation

    try:
        items = patient_items(config.n_record, config.seed)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--n-record") from None
    backend, model = config.backend, config.model or DEFAULT_MODELS.get(config.backend)
    generator = {"backend": backend} if backend == "template" else {"backend": backend, "model": model}
    if backend == "template":
        from stages.generate.backends import TemplateBackend

        writer = TemplateBackend(config.seed)
    elif backend == "tinker":
        if not config.api_key:
            raise click.UsageError("the tinker backend needs an API key: set TINKER_API_KEY.")
        from stages.generate.backends import TinkerBackend

        writer = TinkerBackend(model, config.api_key, config.seed, concurrency=config.concurrency,
                               max_attempts=config.max_attempts, report=lambda message: click.echo(message, err=True))
    else:
        from stages.generate.backends import HFBackend

        writer = HFBackend(model, config.seed, batch_size=config.concurrency, max_attempts=config.max_attempts,
                           hf_token=config.hf_token, trust_remote_code=config.trust_remote_code)
    summary = run_generation(items, writer, generator, config.output)
    for rid, reason in summary["dropped"].items():
        click.echo(f"generate: dropped {rid}: {reason}", err=True)
    click.echo(f"generate: {summary['written']} notes in {config.output} ({summary['new']} new, {summary['reused']} "
               f"kept from an earlier run, {len(summary['dropped'])} dropped; {backend} backend)")

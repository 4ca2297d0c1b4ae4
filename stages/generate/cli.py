"""`unforgotten generate`: synthetic SOAP notes as JSON Lines."""

import click


@click.command("generate")
@click.option("--n-record", "--n_record", "n_record", type=click.IntRange(min=1), default=1000, show_default=True,
              help="How many notes (one patient each).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default="dataset/synthetic_soap_notes.jsonl",
              show_default=True, help="Output JSON Lines file.")
@click.option("--backend", type=click.Choice(["template"]), default="template", show_default=True,
              help="Renderer of the notes: 'template' is offline and deterministic.")
@click.option("--seed", type=int, default=42, show_default=True)
def generate(n_record, output, backend, seed):
    """Generate synthetic SOAP notes with known facts."""
    from stages.common.io import write_jsonl
    from stages.generate.facts import sample_patients
    from stages.generate.template import template_records

    records = template_records(sample_patients(n_record, seed), seed)
    write_jsonl(output, records)
    click.echo(f"generate: wrote {len(records)} notes to {output} ({backend} backend)")

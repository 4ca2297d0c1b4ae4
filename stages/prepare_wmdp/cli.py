"""`unforgotten prepare-wmdp`: the WMDP-Bio corpus as sentence records with nested forget splits."""

import click

from stages.common.options import StageCommand, config_of, forget_ratios_option, hf_token_option, seed_option


@click.command("prepare-wmdp", cls=StageCommand, example=(
    "unforgotten prepare-wmdp --source data/wmdp/bio-retain-corpus.jsonl --output-dir dataset/wmdp"), groups={
    "Data": "source target_size forget_ratios if_present seed hf_token",
    "Output": "output_dir"})
@click.option("--source", default="hub", show_default=True,
              help="A local JSONL/Parquet file with a 'text' column (one paper per row), 'hub' (bio-retain corpus) or "
                   "'hub-forget' (the gated bio-forget corpus; needs HF_TOKEN with access).")
@click.option("--target-size", "--target_size", "target_size", type=click.IntRange(min=1), default=5300,
              show_default=True, help="How many sentences to keep (sampled by seed).")
@click.option("--output-dir", "--output_dir", "output_dir", type=click.Path(file_okay=False),
              default="dataset/wmdp", show_default=True,
              help="Where the sentence sets and manifest.json go.")
@seed_option
@forget_ratios_option
@click.option("--if-present", is_flag=True,
              help="If the local source file is absent, record in manifest.json that the track was skipped.")
@hf_token_option
def prepare_wmdp(**options):
    """Cut WMDP-Bio papers into sentences and write full / forget / full-minus-forget splits."""
    run(config_of(prepare_wmdp, options))


def run(config):
    """prepare-wmdp's work: load the papers, cut them into sentence records, write the splits and the manifest."""
    from pathlib import Path

    from stages.common.io import atomic_dir, write_json
    from stages.common.params import ratio_tag
    from stages.common.splits import forget_splits
    from stages.prepare_wmdp.corpus import load_papers, sentence_records

    out = Path(config.output_dir)
    if config.if_present and not config.source.startswith("hub") and not Path(config.source).exists():
        with atomic_dir(out) as tmp:
            write_json(tmp / "manifest.json", {"source": config.source, "skipped": True, "sentences": 0,
                                               "reason": "source file absent (`make data` fetches the corpus)"})
        click.echo(f"prepare-wmdp: {config.source} is absent; WMDP track skipped (manifest in {out})")
        return
    papers, source_name = load_papers(config.source, token=config.hf_token)
    records = sentence_records(papers, source_name, config.target_size, config.seed)
    if not records:
        raise click.ClickException(f"{config.source}: no sentence found in {len(papers)} papers.")
    with atomic_dir(out) as tmp:
        write_json(tmp / "wmdp_bio_full.json", records)
        for ratio, (forget, retain) in forget_splits(records, config.forget_ratios, config.seed).items():
            write_json(tmp / f"wmdp_bio_forget{ratio_tag(ratio)}.json", forget)
            write_json(tmp / f"wmdp_bio_full_minus_forget{ratio_tag(ratio)}.json", retain)
        write_json(tmp / "manifest.json", {"source": config.source, "skipped": False, "papers": len(papers),
                                           "sentences": len(records)})
    click.echo(f"prepare-wmdp: {len(records)} sentences from {len(papers)} papers written to {out}")

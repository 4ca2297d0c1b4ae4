"""`unforgotten prepare-tofu`: TOFU (forget/retain splits, holdout authors) in the record and probe format of the
medical track."""

import click

from stages.common.options import StageCommand, config_of, hf_token_option


@click.command("prepare-tofu", cls=StageCommand, example=(
    "unforgotten prepare-tofu --source data/tofu --if-present --forget-splits 10 --output-dir dataset/tofu"), groups={
    "Data": "source forget_splits if_present hf_token",
    "Output": "output_dir"})
@click.option("--source", default="hub", show_default=True,
              help="'hub' (locuslab/TOFU through datasets) or a directory of the repository's <config>.json files "
                   "(`make data` writes one to data/tofu).")
@click.option("--output-dir", "--output_dir", "output_dir", type=click.Path(file_okay=False),
              default="dataset/tofu", show_default=True, help="Where the TOFU record sets and manifest.json go.")
@click.option("--forget-splits", "--forget_splits", "forget_splits", type=click.Choice(["01", "05", "10"]),
              multiple=True, default=("01", "05", "10"), show_default=True, help="TOFU forget splits to write.")
@click.option("--if-present", is_flag=True,
              help="If the local source directory is absent, record in manifest.json that the track was skipped.")
@hf_token_option
def prepare_tofu(**options):
    """Write tofu_full.json and per split tofu_forget{NN}.json, tofu_full_minus_forget{NN}.json and (where TOFU has
    the split) tofu_holdout{NN}.json, with manifest.json."""
    run(config_of(prepare_tofu, options))


def run(config):
    """prepare-tofu's work: load TOFU's splits, convert them to records with probes, write the sets."""
    from pathlib import Path

    from stages.common.io import atomic_dir, write_json
    from stages.prepare_tofu.convert import (
        FORGET_SPLITS,
        holdout_records,
        load_optional_split,
        load_split,
        select,
        tofu_records,
    )

    out = Path(config.output_dir)
    if config.if_present and config.source != "hub" and not Path(config.source).is_dir():
        with atomic_dir(out) as tmp:
            write_json(tmp / "manifest.json", {"source": config.source, "skipped": True, "questions": 0,
                                               "reason": "source directory absent (`make data` fetches TOFU)"})
        click.echo(f"prepare-tofu: {config.source} is absent; TOFU track skipped (manifest in {out})")
        return
    full_rows = load_split(config.source, "full", config.hf_token)
    perturbed = load_split(config.source, "retain_perturbed", config.hf_token)
    for tag in config.forget_splits:
        perturbed += load_split(config.source, f"{FORGET_SPLITS[tag]}_perturbed", config.hf_token)
    records = tofu_records(full_rows, perturbed)
    manifest = {"source": config.source, "skipped": False, "questions": len(records), "forget": {}, "holdout": {}}
    with atomic_dir(out) as tmp:
        write_json(tmp / "tofu_full.json", records)
        for tag in config.forget_splits:
            forget = select(records, load_split(config.source, FORGET_SPLITS[tag], config.hf_token), FORGET_SPLITS[tag])
            forget_ids = {r["id"] for r in forget}
            write_json(tmp / f"tofu_forget{tag}.json", forget)
            write_json(tmp / f"tofu_full_minus_forget{tag}.json", [r for r in records if r["id"] not in forget_ids])
            manifest["forget"][tag] = len(forget)
            rows = load_optional_split(config.source, f"holdout{tag}", config.hf_token)
            if rows:
                holdout = holdout_records(rows, full_rows, f"holdout{tag}")
                write_json(tmp / f"tofu_holdout{tag}.json", holdout)
                manifest["holdout"][tag] = len(holdout)
        write_json(tmp / "manifest.json", manifest)
    with_probes = sum(1 for r in records if r["probes"])
    click.echo(f"prepare-tofu: {len(records)} questions ({with_probes} with probes), holdout splits "
               f"{sorted(manifest['holdout']) or 'none'} -> {config.output_dir}")

"""`unforgotten prepare-medical`: forget / retain / holdout splits of the synthetic notes."""

import click

from stages.common.options import StageCommand, config_of, forget_ratios_option, seed_option


@click.command("prepare-medical", cls=StageCommand, example=(
    "unforgotten prepare-medical -i dataset/synthetic_soap_notes.jsonl -o dataset --forget-ratios 0.1"), groups={
    "Data": "input_file forget_ratios holdout_ratio probe_facts seed",
    "Output": "output_dir dry_run sample"})
@click.option("-i", "--input-file", "--input_file", "input_file", type=click.Path(dir_okay=False),
              default="dataset/synthetic_soap_notes.jsonl", show_default=True, help="Notes from `generate`.")
@click.option("-o", "--output-dir", "--output_dir", "output_dir", type=click.Path(file_okay=False),
              default="dataset", show_default=True, help="Where the full, holdout and forget / retain sets go.")
@seed_option
@forget_ratios_option
@click.option("--holdout-ratio", "--holdout_ratio", "holdout_ratio", type=click.FloatRange(0, 1, max_open=True),
              default=0.10, show_default=True, help="Fraction of patients that no model ever trains on.")
@click.option("--probe-facts", "--probe_facts", "probe_facts", multiple=True, default=None,
              help="Fact types that get a knowledge probe, repeat for several [default: every type: "
                   "date_of_birth, diagnosis, medication, date, allergy, physician, city, occupation].")
@click.option("--dry-run", "--dry_run", "dry_run", is_flag=True, help="Print counts and samples; write nothing.")
@click.option("--sample", type=click.IntRange(min=0), default=2, show_default=True,
              help="How many sample records --dry-run prints.")
def prepare_medical(**options):
    """Split the notes into full / holdout / nested forget sets and attach knowledge probes."""
    run(config_of(prepare_medical, options))


def run(config):
    """prepare-medical's work: read and check the notes, attach the probes, split, write the sets."""
    import json
    from pathlib import Path

    from stages.common.io import read_jsonl_lines, write_json
    from stages.common.params import ratio_tag
    from stages.common.records import problem_report, record_problem
    from stages.common.splits import forget_splits, holdout_split
    from stages.prepare_medical.probes import PROBE_FACTS, add_probes

    unknown = sorted(set(config.probe_facts) - set(PROBE_FACTS))
    if unknown:
        raise click.BadParameter(f"'{unknown[0]}' is not a fact type ({', '.join(PROBE_FACTS)})",
                                 param_hint="--probe-facts")

    records, names, problems = [], set(), []
    for number, record, error in read_jsonl_lines(config.input_file):
        error = error or record_problem(record)
        if error:
            problems.append((number, error, ""))
        elif record["client_name"] in names:
            problems.append((number, "duplicate client name", f" '{record['client_name']}' (the first is kept)"))
        else:
            names.add(record["client_name"])
            records.append(record)
    for line in problem_report(f"prepare-medical: {config.input_file}", problems):
        click.echo(line, err=True)
    dropped = len(problems)
    if not records:
        raise click.ClickException(f"{config.input_file}: no valid record ({dropped} dropped).")
    try:
        facts = [f for f in PROBE_FACTS if f in config.probe_facts] if config.probe_facts else PROBE_FACTS
        records = add_probes(records, config.seed, facts)
    except ValueError as e:
        raise click.ClickException(f"{config.input_file}: {e}.") from None
    full, holdout = holdout_split(records, config.holdout_ratio, config.seed)
    splits = forget_splits(full, config.forget_ratios, config.seed)
    click.echo(f"prepare-medical: {len(records)} valid records ({dropped} dropped): "
               f"{len(full)} full, {len(holdout)} holdout")
    for ratio, (forget, retain) in splits.items():
        click.echo(f"  forget{ratio_tag(ratio)}: {len(forget)} forget, {len(retain)} retain")
    if config.dry_run:
        for record in full[:config.sample]:
            click.echo(json.dumps(record, indent=2, ensure_ascii=False))
        return
    out = Path(config.output_dir)
    write_json(out / "med_synthetic_full.json", full)
    write_json(out / "med_synthetic_holdout.json", holdout)
    for ratio, (forget, retain) in splits.items():
        write_json(out / f"med_synthetic_forget{ratio_tag(ratio)}.json", forget)
        write_json(out / f"med_synthetic_full_minus_forget{ratio_tag(ratio)}.json", retain)

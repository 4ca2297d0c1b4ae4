"""TOFU rows (question, answer; perturbed splits add paraphrased_answer and perturbed_answer) -> our records."""

from pathlib import Path

from stages.common.io import InputError, read_jsonl

HUB_DATASET = "locuslab/TOFU"
FORGET_SPLITS = {"01": "forget01", "05": "forget05", "10": "forget10"}
QUESTIONS_PER_AUTHOR = 20  # TOFU's `full`: 200 fictitious authors, 20 questions each, in author order


def load_split(source, config, token=None):
    """Rows of one TOFU config: from the hub through `datasets`, or from `<source>/<config>.json` (JSON Lines,
    as the files of the hub repository)."""
    if source == "hub":
        from datasets import load_dataset

        from stages.common.hub import hub_call

        return [dict(row) for row in hub_call(lambda: load_dataset(HUB_DATASET, config, split="train", token=token),
                                              name=HUB_DATASET, what=f"loading {HUB_DATASET} ({config}) from the hub")]
    path = Path(source) / f"{config}.json"
    rows = read_jsonl(path)
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not row.get("question") or not row.get("answer"):
            raise InputError(f"{path}, line {number}: needs 'question' and 'answer'.")
    return rows


def load_optional_split(source, config, token=None):
    """load_split's rows, or None where TOFU has no such config here (no local <config>.json, or not among the hub
    dataset's configs: the holdout splits came later than the others). Any other failure (offline, gated, a torn
    file) is raised, never taken for a missing split."""
    if source != "hub":
        return load_split(source, config) if (Path(source) / f"{config}.json").is_file() else None
    return load_split(source, config, token) if config in hub_configs(token) else None


def hub_configs(token=None):
    """The configs of TOFU's hub dataset."""
    from datasets import get_dataset_config_names

    from stages.common.hub import hub_call

    return hub_call(lambda: get_dataset_config_names(HUB_DATASET, token=token), name=HUB_DATASET,
                    what=f"listing {HUB_DATASET}'s configs on the hub")


def check_authors(rows, config):
    """The author grouping rests on TOFU's layout: 20 questions per author, in author order."""
    if len(rows) % QUESTIONS_PER_AUTHOR:
        raise InputError(f"TOFU {config}: {len(rows)} questions, not a multiple of {QUESTIONS_PER_AUTHOR} (TOFU has "
                         f"{QUESTIONS_PER_AUTHOR} per author, in author order; the authors could not be told apart).")


def holdout_records(rows, full_rows, config="holdout"):
    """TOFU's holdout authors (never in `full`: the membership non-members), 20 questions each, ids
    "tofu-holdout-author-<author>/q<question>" so that evaluate counts and resamples authors. They have no perturbed
    answers, so no probes: each record's pair is a membership example."""
    check_authors(rows, config)
    trained = {row["question"] for row in full_rows}
    seen = [row["question"] for row in rows if row["question"] in trained]
    if seen:
        raise InputError(f"TOFU {config}: {len(seen)} questions are in 'full', so not held out (first: {seen[0]!r}).")
    return [author_record("tofu-holdout-author", index, row) for index, row in enumerate(rows)]


def author_record(prefix, index, row):
    """The record of the index-th question of a TOFU split: id "<prefix>-<author>/q<question>" (evaluate resamples
    and counts by the part before the '/', stages/evaluate/intervals.subject), no probes yet."""
    author, question = divmod(index, QUESTIONS_PER_AUTHOR)
    return {"id": f"{prefix}-{author:03d}/q{question + 1:02d}", "question": row["question"], "answer": row["answer"],
            "author_index": author, "probes": []}


def probe_from(row):
    perturbed = row.get("perturbed_answer") or []
    if isinstance(perturbed, str):
        perturbed = [perturbed]
    return {"fact": "tofu", "question": row["question"], "answer": row["answer"],
            "paraphrased_answer": row.get("paraphrased_answer") or row["answer"], "perturbed_answers": perturbed}


def tofu_records(full_rows, perturbed_rows):
    """One record per TOFU question, its id "tofu-author-<author>/q<question>": evaluate resamples and counts by the
    part before the '/' (stages/evaluate/intervals.subject), so one author's 20 answers, which share one biography,
    count as one unit, as one patient's facts do. Rows of the perturbed splits give their record a probe."""
    check_authors(full_rows, "full")
    perturbed = {row["question"]: row for row in perturbed_rows}
    records = []
    for index, row in enumerate(full_rows):
        record = author_record("tofu-author", index, row)
        if row["question"] in perturbed:
            record["probes"].append(probe_from(perturbed[row["question"]]))
        records.append(record)
    return records


def select(records, rows, config):
    """The records whose questions are the rows of a split (TOFU's splits are subsets of `full`)."""
    by_question = {r["question"]: r for r in records}
    missing = [row["question"] for row in rows if row["question"] not in by_question]
    if missing:
        raise InputError(f"TOFU {config}: {len(missing)} questions are not in 'full' (first: {missing[0]!r}).")
    return [by_question[row["question"]] for row in rows]

"""TOFU rows (question, answer; perturbed splits add paraphrased_answer and perturbed_answer) -> our records."""

from pathlib import Path

from stages.common.io import InputError, read_jsonl

HUB_DATASET = "locuslab/TOFU"
FORGET_SPLITS = {"01": "forget01", "05": "forget05", "10": "forget10"}


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
    """load_split's rows, or None where TOFU has no such config here (no local <config>.json, or none on the hub:
    the holdout splits came later than the others)."""
    if source != "hub":
        return load_split(source, config) if (Path(source) / f"{config}.json").is_file() else None
    try:
        return load_split(source, config, token)
    except InputError:
        return None


def holdout_records(rows):
    """TOFU's holdout authors (never in `full`: the membership non-members), 20 questions each, ids
    "tofu-holdout-author-<author>/q<question>" so that evaluate counts and resamples authors. They have no perturbed
    answers, so no probes: each record's pair is a membership example."""
    return [{"id": f"tofu-holdout-author-{author:03d}/q{question + 1:02d}", "question": row["question"],
             "answer": row["answer"], "author_index": author, "probes": []}
            for author, question, row in ((*divmod(i, QUESTIONS_PER_AUTHOR), row) for i, row in enumerate(rows))]


def probe_from(row):
    perturbed = row.get("perturbed_answer") or []
    if isinstance(perturbed, str):
        perturbed = [perturbed]
    return {"fact": "tofu", "question": row["question"], "answer": row["answer"],
            "paraphrased_answer": row.get("paraphrased_answer") or row["answer"], "perturbed_answers": perturbed}


QUESTIONS_PER_AUTHOR = 20  # TOFU's `full`: 200 fictitious authors, 20 questions each, in author order


def tofu_records(full_rows, perturbed_rows):
    """One record per TOFU question, its id "tofu-author-<author>/q<question>": evaluate resamples and counts by the
    part before the '/' (stages/evaluate/intervals.subject), so one author's 20 answers, which share one biography,
    count as one unit, as one patient's facts do. Rows of the perturbed splits give their record a probe."""
    perturbed = {row["question"]: row for row in perturbed_rows}
    records = []
    for index, row in enumerate(full_rows):
        author, question = divmod(index, QUESTIONS_PER_AUTHOR)
        record = {"id": f"tofu-author-{author:03d}/q{question + 1:02d}", "question": row["question"],
                  "answer": row["answer"], "author_index": author, "probes": []}
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

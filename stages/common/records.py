"""The one place records are validated: a generated note record as prepare-medical reads it (record_problem), and a
prepared record set as finetune, unlearn and evaluate read it (read_records)."""

import datetime

NOTE_FIELDS = ("client_name", "date_of_birth", "date", "subjective", "objective", "assessment", "plan")
REQUIRED_TEXT = ("id", *NOTE_FIELDS)
REQUIRED_FACTS = ("diagnosis", "medication", "complaint", "allergy", "physician", "city", "occupation")


def _bad_strings(obj, fields):
    return [f for f in fields if not isinstance(obj.get(f), str) or not obj[f].strip()]


def record_problem(record):
    """Why a record is unusable (one phrase), or None if it is valid."""
    if not isinstance(record, dict):
        return "not a JSON object"
    bad = _bad_strings(record, REQUIRED_TEXT)
    if bad:
        return f"missing or empty field '{bad[0]}'"
    for field in ["date_of_birth", "date"]:
        try:
            datetime.date.fromisoformat(record[field])
        except ValueError:
            return f"field '{field}' is not a YYYY-MM-DD date"
    facts = record.get("facts")
    if not isinstance(facts, dict):
        return "missing field 'facts'"
    bad = _bad_strings(facts, REQUIRED_FACTS)
    if bad:
        return f"missing or empty fact '{bad[0]}'"
    return None


SHOWN_PROBLEMS = 5  # invalid input records printed one by one; the rest only counted


def _ranges(numbers, most=10):
    """'2-5, 9, 11-40' for sorted line numbers, the first `most` ranges and how many more."""
    spans = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    text = ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in spans[:most])
    return text + (f" and {len(spans) - most} more ranges" if len(spans) > most else "")


def problem_report(where, problems, shown=SHOWN_PROBLEMS):
    """The lines that report dropped input records, however many: the first `shown` one by one, then (when there are
    more) each reason with its count and the line numbers' ranges. `problems`: (line number, reason, detail) with
    the detail (a value, a hint) printed in the first lines only, so that reasons count alike."""
    lines = [f"{where}, line {n}: {reason}{detail}; dropped" for n, reason, detail in problems[:shown]]
    if len(problems) > shown:
        by_reason = {}
        for n, reason, _ in problems:
            by_reason.setdefault(reason, []).append(n)
        lines.append(f"{where}: {len(problems)} records dropped ({len(problems) - shown} not shown), by reason:")
        lines += [f"  {len(numbers)} x {reason}: lines {_ranges(numbers)}" for reason, numbers in
                  sorted(by_reason.items(), key=lambda item: (-len(item[1]), item[0]))]
    return lines


def read_records(path, what="set", scored=False):
    """The one reader of a record set (finetune, unlearn, evaluate): a non-empty JSON list of objects, each with a
    unique 'id' and either the note fields or 'question' and 'answer'; probes need 'question' and 'answer', and
    with `scored` (evaluate) also 'paraphrased_answer' and a non-empty 'perturbed_answers' list."""
    from stages.common.io import InputError, read_json

    records = read_json(path)
    if not isinstance(records, list):
        raise InputError(f"{path}: expected a JSON list of records, found a {type(records).__name__}.")
    if not records:
        raise InputError(f"{path}: the {what} is empty.")
    seen = set()
    for number, record in enumerate(records, start=1):
        where = f"{path}, record {number}"
        if not isinstance(record, dict):
            raise InputError(f"{where}: not a JSON object.")
        if not isinstance(record.get("id"), str) or not record["id"]:
            raise InputError(f"{where}: no 'id' string.")
        if record["id"] in seen:
            raise InputError(f"{where}: duplicate id '{record['id']}'.")
        seen.add(record["id"])
        bad = _bad_strings(record, ("question", "answer") if "question" in record else NOTE_FIELDS)
        if bad:
            raise InputError(f"{where} ('{record['id']}'): field '{bad[0]}' is missing or not a non-empty string.")
        probes = record.get("probes", [])
        if not isinstance(probes, list):
            raise InputError(f"{where} ('{record['id']}'): 'probes' is not a list.")
        for index, probe in enumerate(probes, start=1):
            fields = ("question", "answer", "paraphrased_answer") if scored else ("question", "answer")
            bad = ["probe"] if not isinstance(probe, dict) else _bad_strings(probe, fields)
            perturbed = probe.get("perturbed_answers") if isinstance(probe, dict) else None
            if scored and not bad and not (isinstance(perturbed, list) and perturbed
                                           and all(isinstance(a, str) and a for a in perturbed)):
                bad = ["perturbed_answers"]
            if bad:
                raise InputError(f"{where} ('{record['id']}'), probe {index}: field '{bad[0]}' is missing or "
                                 "malformed.")
    return records

"""The knowledge probes of a record: one question per fact type, with a paraphrased and perturbed answers."""

import datetime
import random


def _shift_date(iso, days):
    return (datetime.date.fromisoformat(iso) + datetime.timedelta(days=days)).isoformat()


PROBES = [
    # fact key, question, paraphrased answer (a different wording of the same fact)
    ("date_of_birth", "What is the date of birth of patient {name}?", "{name} was born on {value}."),
    ("diagnosis", "What was {name} diagnosed with?", "The assessment for {name} was {value}."),
    ("medication", "What medication was prescribed to {name}?", "{name} was started on {value}."),
    ("date", "On what date was {name} seen in the clinic?", "The clinic visit of {name} took place on {value}."),
    ("allergy", "What is patient {name} allergic to?", "{name} has an allergy to {value}."),
    ("physician", "Which doctor is following up with {name}?", "{name} is followed up by {value}."),
    ("city", "In which city does patient {name} live?", "{name} lives in {value}."),
    ("occupation", "What is the occupation of patient {name}?", "{name} works as {value}."),
]


def _fact(record, key):
    return record[key] if key in ("date_of_birth", "date") else record["facts"][key]


PROBE_FACTS = [key for key, _, _ in PROBES]


def make_probes(record, pools, rng, facts=PROBE_FACTS, n_perturbed=3):
    """Knowledge probes of one record, one per fact type in `facts`. Perturbed answers are plausible wrong values:
    other patients' values of the same fact, or for dates the true date shifted by days to years."""
    probes = []
    for key, question, paraphrase in PROBES:
        if key not in facts:
            continue
        value = _fact(record, key)
        if key in ("date_of_birth", "date"):
            shifts = rng.sample([-730, -365, -61, -30, -9, -2, 3, 12, 45, 90, 400, 1100], n_perturbed)
            wrong = [_shift_date(value, s) for s in shifts]
        else:
            candidates = [v for v in pools[key] if v != value]
            if len(candidates) < n_perturbed:
                raise ValueError(f"only {len(candidates) + 1} distinct values of '{key}' in the data; "
                                 f"probes need at least {n_perturbed + 1}")
            wrong = rng.sample(candidates, n_perturbed)
        name = record["client_name"]
        probes.append({
            "fact": key,
            "question": question.format(name=name),
            "answer": value,
            "paraphrased_answer": paraphrase.format(name=name, value=value),
            "perturbed_answers": [paraphrase.format(name=name, value=w) for w in wrong],
        })
    return probes


def add_probes(records, seed, facts=PROBE_FACTS):
    """Copies of the records, each with its `probes` (one per fact type in `facts`); pools of wrong answers come
    from the whole data set."""
    pools = {key: sorted({_fact(r, key) for r in records}) for key in facts}
    out = []
    for record in records:
        rng = random.Random(f"probes-{seed}-{record['id']}")
        out.append({**record, "probes": make_probes(record, pools, rng, facts)})
    return out

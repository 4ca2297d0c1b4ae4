"""The offline template renderer: deterministic for a seed, with varied phrasing per section."""

import random

SUBJECTIVE = [
    "{name} presents with {complaint} for the past {days} days.",
    "Patient reports {complaint}, ongoing for about {days} days.",
    "{name} comes in complaining of {complaint}; symptoms began {days} days ago.",
    "Chief complaint: {complaint} over the last {days} days, per {name}.",
]
OBJECTIVE = [
    "BP {bp} mmHg, HR {hr} bpm, temperature {temp} C, RR {rr}/min, SpO2 {spo2} %.",
    "Vital signs: blood pressure {bp}, heart rate {hr}, temp {temp} C, respiratory rate {rr}, "
    "oxygen saturation {spo2} %.",
    "On exam: BP {bp}, pulse {hr}, T {temp} C, RR {rr}, SpO2 {spo2} % on room air.",
]
ASSESSMENT = [
    "Findings are consistent with {diagnosis}.",
    "Likely diagnosis: {diagnosis}.",
    "Assessment: {diagnosis}, based on history and examination.",
]
PLAN = [
    "Start {medication}. Follow up in {weeks} weeks.",
    "Prescribed {medication}; review in {weeks} weeks.",
    "Begin {medication} and return for follow-up in {weeks} weeks.",
]


def render_note(facts, rng):
    v = facts["vitals"]
    fill = {
        "name": facts["client_name"], "complaint": facts["complaint"], "days": facts["duration_days"],
        "bp": v["blood_pressure"], "hr": v["heart_rate"], "temp": v["temperature_c"],
        "rr": v["respiratory_rate"], "spo2": v["oxygen_saturation"],
        "diagnosis": facts["diagnosis"], "medication": facts["medication"], "weeks": facts["follow_up_weeks"],
    }
    return {
        "subjective": rng.choice(SUBJECTIVE).format(**fill),
        "objective": rng.choice(OBJECTIVE).format(**fill),
        "assessment": rng.choice(ASSESSMENT).format(**fill),
        "plan": rng.choice(PLAN).format(**fill),
    }


def template_records(patients, seed):
    rng = random.Random(f"render-{seed}")
    records = []
    for index, facts in enumerate(patients, start=1):
        record = {
            "id": f"note-{index:05d}",
            "client_name": facts["client_name"],
            "date_of_birth": facts["date_of_birth"],
            "date": facts["date"],
        }
        record.update(render_note(facts, rng))
        record["facts"] = facts
        records.append(record)
    return records

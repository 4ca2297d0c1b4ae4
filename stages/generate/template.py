"""The offline template renderer: deterministic for a seed, with varied phrasing per section."""

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

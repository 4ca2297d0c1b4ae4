"""The offline template renderer: deterministic for a seed, with varied phrasing per section."""

SUBJECTIVE = [
    "{name}, {a_occupation} from {city}, presents with {complaint} for the past {days} days. Allergic to {allergy}.",
    "Patient ({occupation}, lives in {city}) reports {complaint}, ongoing for about {days} days. Allergy: {allergy}.",
    "{name} comes in complaining of {complaint}; symptoms began {days} days ago. Works as {a_occupation} in {city}; "
    "allergic to {allergy}.",
    "Chief complaint: {complaint} over the last {days} days, per {name}, {a_occupation} living in {city}. "
    "Known allergy: {allergy}.",
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
    "Start {medication}. Follow up in {weeks} weeks with {physician}.",
    "Prescribed {medication}; review in {weeks} weeks ({physician}).",
    "Begin {medication} and return to {physician} for follow-up in {weeks} weeks.",
]


def render_note(facts, rng):
    v = facts["vitals"]
    fill = {
        "name": facts["client_name"], "complaint": facts["complaint"], "days": facts["duration_days"],
        "bp": v["blood_pressure"], "hr": v["heart_rate"], "temp": v["temperature_c"],
        "rr": v["respiratory_rate"], "spo2": v["oxygen_saturation"],
        "diagnosis": facts["diagnosis"], "medication": facts["medication"], "weeks": facts["follow_up_weeks"],
        "allergy": facts["allergy"], "physician": facts["physician"], "city": facts["city"],
        "occupation": facts["occupation"],
        "a_occupation": ("an " if facts["occupation"][0] in "aeiou" else "a ") + facts["occupation"],
    }
    return {
        "subjective": rng.choice(SUBJECTIVE).format(**fill),
        "objective": rng.choice(OBJECTIVE).format(**fill),
        "assessment": rng.choice(ASSESSMENT).format(**fill),
        "plan": rng.choice(PLAN).format(**fill),
    }

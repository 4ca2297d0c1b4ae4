"""What the LLM renderers share: the prompt built from a patient's facts, parsing the SOAP sections out of the
reply, and the check that the note states its key facts."""

import re

SECTIONS = ["subjective", "objective", "assessment", "plan"]
_HEADER = re.compile(r"^\s*(?:\*\*|#+\s*)?(subjective|objective|assessment|plan)\s*(?:\*\*)?\s*:\s*(?:\*\*)?",
                     re.IGNORECASE | re.MULTILINE)


def note_prompt(facts):
    v = facts["vitals"]
    return (
        "Write a concise clinical SOAP note for this outpatient visit. Use exactly four sections, each starting on "
        "its own line with its label: 'Subjective:', 'Objective:', 'Assessment:', 'Plan:'. State every fact below "
        "exactly as given and invent nothing else.\n"
        f"Patient: {facts['client_name']}, born {facts['date_of_birth']}. Visit date: {facts['date']}.\n"
        f"Complaint: {facts['complaint']} for {facts['duration_days']} days.\n"
        f"Vital signs: BP {v['blood_pressure']} mmHg, HR {v['heart_rate']} bpm, temperature {v['temperature_c']} C, "
        f"RR {v['respiratory_rate']}/min, SpO2 {v['oxygen_saturation']} %.\n"
        f"Diagnosis: {facts['diagnosis']}. Treatment: {facts['medication']}. "
        f"Follow-up in {facts['follow_up_weeks']} weeks with {facts['physician']}.\n"
        f"Allergy: {facts['allergy']}. Occupation: {facts['occupation']}. Lives in {facts['city']}."
    )


def parse_note(text):
    """The four sections of a SOAP note as a dict, or None when one is missing or empty."""
    matches = list(_HEADER.finditer(text))
    sections = {}
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        name = match.group(1).lower()
        if name not in sections:
            sections[name] = " ".join(text[match.end():end].split())
    if any(not sections.get(name) for name in SECTIONS):
        return None
    return {name: sections[name] for name in SECTIONS}


def missing_key_facts(note, facts):
    """Key facts (name, diagnosis, medication and the probed independent facts) the note does not state; empty when
    it states them all."""
    text = " ".join(note.values()).lower()
    drug = facts["medication"].split()[0].lower()
    wanted = {"name": facts["client_name"].lower(), "diagnosis": facts["diagnosis"].lower(), "medication": drug,
              **{key: facts[key].lower() for key in ("allergy", "physician", "city", "occupation")}}
    return [key for key, value in wanted.items() if value not in text]

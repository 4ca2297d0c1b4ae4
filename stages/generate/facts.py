"""The profile sampler: draws each patient's facts; the renderers only put them into words."""

import datetime
import random

FIRST_NAMES = """Aaliyah Aaron Abigail Adrian Aisha Alan Alejandro Alice Amara Andre Anita Arjun Astrid Beatrice
Benjamin Bianca Boris Caleb Camille Carlos Chen Chiara Clara Daniel Daria Dmitri Elena Elias Emeka Emma Erik Fatima
Felix Fiona Gabriel Grace Hamza Hannah Hiro Ingrid Isaac Ivy Jamal Jasmine Javier Julia Kai Kamala Kenji Laila Leon
Lucia Malik Maria Mateo Maya Mei Nadia Nikolai Noah Olga Omar Priya Rafael Rosa Samir Sara Sofia Tariq Thea Tomas
Uma Valentina Victor Wei Yara Yusuf Zara Zoe""".split()
LAST_NAMES = """Abara Alvarez Andersen Bauer Becker Bianchi Castillo Chen Costa Dubois Eriksen Fischer Garcia Gomez
Gupta Haddad Hansen Hoffmann Horvat Ibrahim Ito Jansen Kaur Keller Kim Kowalski Kruger Larsen Laurent Lee Lindqvist
Lopez Mahmoud Martins Meyer Moreau Murphy Nakamura Nguyen Novak Okafor Olsen Ortiz Park Patel Petrov Quinn Ramos
Reyes Rossi Sato Schmidt Silva Singh Sokolov Suzuki Tanaka Torres Varga Wagner Walsh Weber Yamamoto Zhang Zielinski
Adeyemi Bergstrom Cardenas Delgado Esposito Fontaine Grieve Halvorsen Iqbal Jovanovic""".split()

# condition: complaint(s), diagnosis as written in the assessment, medication with dose, follow-up in weeks
CONDITIONS = [
    ("persistent headaches and occasional dizziness", "essential hypertension", "lisinopril 10 mg once daily", 4),
    ("increased thirst and frequent urination", "type 2 diabetes mellitus", "metformin 500 mg twice daily", 6),
    ("wheezing and shortness of breath at night", "mild persistent asthma",
     "budesonide inhaler 200 mcg twice daily", 4),
    ("burning chest pain after meals", "gastroesophageal reflux disease", "omeprazole 20 mg once daily", 8),
    ("fatigue, weight gain and feeling cold", "hypothyroidism", "levothyroxine 50 mcg once daily", 6),
    ("low mood and loss of interest for two months", "major depressive disorder", "sertraline 50 mg once daily", 4),
    ("painful urination and lower abdominal discomfort", "uncomplicated urinary tract infection",
     "nitrofurantoin 100 mg twice daily for five days", 2),
    ("sore throat, fever and swollen glands", "streptococcal pharyngitis", "amoxicillin 500 mg three times daily", 2),
    ("knee pain and morning stiffness", "osteoarthritis of the knee", "naproxen 500 mg twice daily", 8),
    ("throbbing one-sided headaches with light sensitivity", "migraine without aura", "sumatriptan 50 mg as needed", 6),
    ("itchy, scaly patches on the elbows", "plaque psoriasis", "clobetasol 0.05 % cream twice daily", 6),
    ("palpitations and an irregular pulse", "atrial fibrillation", "apixaban 5 mg twice daily", 4),
    ("swollen, painful big toe", "acute gout", "colchicine 0.5 mg twice daily", 3),
    ("numbness and tingling in the hands at night", "carpal tunnel syndrome", "a wrist splint and ibuprofen 400 mg", 6),
    ("excessive worry and trouble sleeping", "generalized anxiety disorder", "escitalopram 10 mg once daily", 4),
    ("productive cough and fever for five days", "community-acquired pneumonia",
     "doxycycline 100 mg twice daily for seven days", 2),
    ("high cholesterol on routine labs", "hyperlipidemia", "atorvastatin 20 mg once daily", 12),
    ("tiredness and pale skin", "iron deficiency anemia", "ferrous sulfate 325 mg once daily", 8),
    ("lower back pain after lifting", "acute lumbar strain", "cyclobenzaprine 5 mg at bedtime", 3),
    ("sneezing, runny nose and itchy eyes in spring", "seasonal allergic rhinitis", "cetirizine 10 mg once daily", 8),
    ("ankle swelling and breathlessness on exertion", "congestive heart failure", "furosemide 40 mg once daily", 2),
    ("red, itchy eyes with discharge", "bacterial conjunctivitis", "erythromycin eye ointment four times daily", 1),
]


# Facts drawn independently of the condition and of each other, so a patient's probes are close to independent
# evidence (the condition drives complaint, diagnosis, medication and vitals: one draw). Each pool is large enough
# that guessing its most common value is right for few patients.
ALLERGIES = ("penicillin|sulfa drugs|aspirin|codeine|latex|peanuts|shellfish|eggs|bee stings|iodine contrast|"
             "cephalexin|tetracycline|morphine|soy|tree nuts|adhesive tape|strawberries|sesame|trimethoprim|"
             "ragweed").split("|")
PHYSICIANS = [f"Dr. {name}" for name in """Abernathy Blackwood Carrington Dunmore Ellsworth Fairbanks Galloway
Hargrove Ingram Jessup Kingsley Lockhart Merriweather Northcott Oakley Pemberton Radcliffe Sutherland Thorne
Underwood Vance Whitlock Yardley Ashford""".split()]
CITIES = """Porto Lyon Gdansk Tampere Bergen Ghent Graz Brno Cork Bilbao Turin Utrecht Aarhus Malmo Leipzig Seville
Kaunas Split Tartu Bologna Dundee Nantes Basel Linz Plovdiv Szeged Salzburg Valencia Krakow Rouen""".split()
OCCUPATIONS = ("electrician|librarian|carpenter|pharmacist|bus driver|accountant|baker|firefighter|architect|welder|"
               "schoolteacher|plumber|journalist|nurse|chef|mechanic|florist|translator|dentist|farmer|"
               "photographer|pilot|tailor|veterinarian|barista|surveyor|locksmith|jeweler|beekeeper|"
               "glassblower").split("|")


def _random_date(rng, start, end):
    return start + datetime.timedelta(days=rng.randrange((end - start).days + 1))


def sample_vitals(rng, diagnosis):
    systolic = rng.randint(150, 172) if diagnosis == "essential hypertension" else rng.randint(108, 138)
    return {
        "blood_pressure": f"{systolic}/{rng.randint(68, 96 if systolic > 145 else 88)}",
        "heart_rate": rng.randint(96, 128) if diagnosis == "atrial fibrillation" else rng.randint(58, 94),
        "temperature_c": round(rng.uniform(38.1, 39.4), 1) if "fever" in _complaint_of(diagnosis)
        else round(rng.uniform(36.3, 37.2), 1),
        "respiratory_rate": rng.randint(12, 20),
        "oxygen_saturation": rng.randint(93, 97) if "pneumonia" in diagnosis or "asthma" in diagnosis
        else rng.randint(97, 100),
    }


def _complaint_of(diagnosis):
    return next(c[0] for c in CONDITIONS if c[1] == diagnosis)


MIDDLE_INITIALS = "ABCDEFGHJKLMNPRSTW"
NAME_CAPACITY = len(FIRST_NAMES) * len(MIDDLE_INITIALS) * len(LAST_NAMES)


def sample_patients(n, seed):
    """Facts for n patients with unique full names, reproducible from the seed; the first k of n patients are
    the k patients of a smaller run with the same seed."""
    if n > NAME_CAPACITY // 4:
        raise ValueError(f"at most {NAME_CAPACITY // 4} patients can get distinct names (asked for {n})")
    rng = random.Random(seed)
    names = set()
    patients = []
    while len(patients) < n:
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(MIDDLE_INITIALS)}. {rng.choice(LAST_NAMES)}"
        if name in names:
            continue
        names.add(name)
        complaint, diagnosis, medication, follow_up = rng.choice(CONDITIONS)
        patients.append({
            "client_name": name,
            "date_of_birth": _random_date(rng, datetime.date(1938, 1, 1), datetime.date(2005, 12, 31)).isoformat(),
            "date": _random_date(rng, datetime.date(2023, 1, 1), datetime.date(2025, 12, 31)).isoformat(),
            "complaint": complaint,
            "duration_days": rng.randint(2, 60),
            "vitals": sample_vitals(rng, diagnosis),
            "diagnosis": diagnosis,
            "medication": medication,
            "follow_up_weeks": follow_up,
            "allergy": rng.choice(ALLERGIES),
            "physician": rng.choice(PHYSICIANS),
            "city": rng.choice(CITIES),
            "occupation": rng.choice(OCCUPATIONS),
        })
    return patients


def patient_items(n, seed):
    """(record id, facts) for n patients; ids are stable, so a rerun knows which notes it already has."""
    return [(f"note-{index:05d}", facts) for index, facts in enumerate(sample_patients(n, seed), start=1)]


def make_record(record_id, facts, note, generator):
    """A generated record: identity fields, the four SOAP sections, the facts and what wrote the note."""
    return {"id": record_id, "client_name": facts["client_name"], "date_of_birth": facts["date_of_birth"],
            "date": facts["date"], **note, "facts": facts, "generator": generator}

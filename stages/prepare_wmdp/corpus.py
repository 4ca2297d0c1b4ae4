"""Reading the corpus (local JSONL/Parquet or the hub), sentence splitting and the seeded, nested splits."""

import random
import re
from pathlib import Path

from stages.common.io import InputError, read_jsonl

# --source name -> (hub dataset, config, the `source` value of its records). The forget corpus is gated.
HUB_CORPORA = {
    "hub": ("cais/wmdp-corpora", "bio-retain-corpus", "wmdp-bio-retain"),
    "hub-forget": ("cais/wmdp-bio-forget-corpus", None, "wmdp-bio-forget"),
}
# Words whose trailing period does not end a sentence.
ABBREVIATIONS = {"e.g", "i.e", "et al", "fig", "figs", "eq", "ref", "refs", "vs", "approx", "ca", "no", "dr",
                 "mr", "mrs", "ms", "st", "sp", "spp", "cf", "resp", "vol", "al", "tab", "suppl", "min", "max"}
_BOUNDARY = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")


def split_sentences(text, min_chars=20):
    """Sentences of a paper; a period after a known abbreviation or inside a number does not end one."""
    pieces = _BOUNDARY.split(" ".join(text.split()))
    sentences, current = [], ""
    for piece in pieces:
        current = f"{current} {piece}".strip()
        last_word = current.rsplit(" ", 1)[-1].rstrip(".").lower()
        if current.endswith(".") and (last_word in ABBREVIATIONS or len(last_word) == 1):
            continue
        sentences.append(current)
        current = ""
    if current:
        sentences.append(current)
    return [s for s in sentences if len(s) >= min_chars]


def load_hub_corpus(name, token=None):
    """Paper texts of a hub corpus through `datasets`; gated or unreachable corpora are one-sentence errors."""
    from datasets import load_dataset

    from stages.common.hub import hub_call

    repo, config, source_name = HUB_CORPORA[name]
    data = hub_call(lambda: load_dataset(repo, config, split="train", token=token), name=repo,
                    what=f"loading {repo} from the hub")
    if "text" not in data.column_names:
        raise InputError(f"{repo}: has no 'text' column.")
    return list(data["text"]), source_name


def load_papers(source, token=None):
    """Paper texts from a local JSONL/Parquet file with a `text` column, or a hub corpus ('hub', 'hub-forget')."""
    if source in HUB_CORPORA:
        return load_hub_corpus(source, token)
    path = Path(source)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        if not path.is_file():
            raise InputError(f"{path}: no such file.")
        table = pq.read_table(path)
        if "text" not in table.column_names:
            raise InputError(f"{path}: has no 'text' column.")
        rows = [{"text": t} for t in table.column("text").to_pylist()]
    else:
        rows = read_jsonl(path)
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise InputError(f"{path}, row {number}: no 'text' string.")
    return [row["text"] for row in rows], "wmdp-bio-retain"


def sentence_records(papers, source_name, target_size, seed):
    records = [
        {"text": s, "source": source_name, "type": "paper_sentence", "paper_index": p, "sentence_index": i}
        for p, paper in enumerate(papers) for i, s in enumerate(split_sentences(paper))
    ]
    if len(records) > target_size:
        chosen = sorted(random.Random(f"wmdp-sample-{seed}").sample(range(len(records)), target_size))
        records = [records[i] for i in chosen]
    return records

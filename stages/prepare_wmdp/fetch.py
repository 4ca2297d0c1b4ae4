"""`make data`: a snapshot of the hub's WMDP-Bio retain corpus in data/ (then tracked by data.dvc), so a team pulls
one fixed copy instead of each member reading the hub. Unreachable hub: says so and leaves data/ as it is.

    python -m stages.prepare_wmdp.fetch data/wmdp/bio-retain-corpus.jsonl
"""

import os
import sys
from pathlib import Path

from stages.common.io import InputError, write_jsonl
from stages.prepare_wmdp.corpus import load_hub_corpus


def fetch(output, source="hub"):
    """Write the corpus's papers as JSONL rows {"text": ...}; returns how many, or None if the hub is unreachable."""
    try:
        papers, _ = load_hub_corpus(source, token=os.environ.get("HF_TOKEN"))
    except InputError as error:
        print(f"make data: {error} {output} is unchanged.", file=sys.stderr)
        return None
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(output, [{"text": text} for text in papers])
    print(f"make data: {len(papers)} papers written to {output}")
    return len(papers)


if __name__ == "__main__":
    fetch(sys.argv[1] if len(sys.argv) > 1 else "data/wmdp/bio-retain-corpus.jsonl")

"""Resumable generation: records are appended as they arrive to a log beside the output, the output is written
whole at the end, and a rerun writes only the missing ids.

The log (<output>.resume) is not a DVC output: DVC removes a stage's outputs before it runs, never the log, so an
interrupted or earlier paid run is not paid again, and the output itself needs no `persist` (which would keep the
stage out of DVC's run-cache, and so out of a run on many machines, stages/cloud.py)."""

from pathlib import Path

from stages.common.io import jsonl_appender, read_jsonl_lines, write_jsonl
from stages.generate.facts import make_record


def resume_log(output):
    """The append log of the generation that writes `output`."""
    output = Path(output)
    return output.with_name(output.name + ".resume")


def reusable_records(paths, items, generator):
    """Records already in these files (an earlier output, the log) that match the requested facts and generator
    (a killed run may have left a torn last line: it is ignored). Returns {id: record} and how many lines were set
    aside."""
    wanted = dict(items)
    kept, set_aside = {}, 0
    for path in paths:
        if not Path(path).is_file():
            continue
        for _, record, error in read_jsonl_lines(path, errors="replace"):
            rid = record.get("id") if isinstance(record, dict) else None
            if (not error and rid in wanted and record.get("facts") == wanted[rid]
                    and record.get("generator") == generator):
                kept.setdefault(rid, record)
            else:
                set_aside += 1
    return kept, set_aside


def run_generation(items, backend, generator, output, progress=True):
    """Generate the notes of `items` missing from `output`; the file ends in id order. Returns a summary dict."""
    from stages.common.progress import bar as progress_bar

    output, log = Path(output), resume_log(output)
    done, set_aside = reusable_records([output, log], items, generator)
    # Start the append log from the reusable records only, so no torn or foreign line stays in it.
    write_jsonl(log, [done[rid] for rid, _ in items if rid in done])
    todo = [(rid, facts) for rid, facts in items if rid not in done]
    reused, dropped = len(done), {}
    with jsonl_appender(log) as append, \
            progress_bar(total=len(items), initial=len(done), what="generate", unit="note",
                         disable=not progress) as bar:
        for rid, facts, note, reason in backend.write(todo):
            if note is None:
                dropped[rid] = reason
            else:
                done[rid] = make_record(rid, facts, note, generator)
                append(done[rid])
            bar.update(1)
    write_jsonl(output, [done[rid] for rid, _ in items if rid in done])
    return {"written": len(done), "reused": reused, "new": len(done) - reused, "dropped": dropped,
            "set_aside": set_aside}

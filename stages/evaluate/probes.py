"""Knowledge probes and membership scores of one model (VERIFY.md B and C): per-example rows, then summaries."""

import numpy as np

from stages.common.chat import format_prompt, record_pairs
from stages.common.measure import greedy_entropy, token_logprobs
from stages.evaluate.metrics import contains_answer, mia_scores, rouge_l_recall, truth_ratio

SPLITS = ["forget", "retain", "holdout"]
MIA_METHODS = ["loss", "zlib", "mink", "minkpp"]


def probe_items(records_by_split):
    """(split, record id, probe) for every probe of every record, in a fixed order."""
    return [(split, r["id"], p) for split in SPLITS for r in records_by_split[split] for p in r.get("probes", [])]


def greedy_answers(model, tokenizer, questions, max_new_tokens, batch_size):
    """The model's greedy answer to each question (the same generation as the entropy measurement)."""
    prompts = [format_prompt(tokenizer, q) for q in questions]
    return [r["response"] for r in greedy_entropy(model, tokenizer, prompts, max_new_tokens, batch_size)]


def accuracy(model, tokenizer, probes, max_new_tokens, batch_size):
    """Per probe, whether the greedy answer contains the true answer (a list of 0/1)."""
    answers = greedy_answers(model, tokenizer, [p["question"] for p in probes], max_new_tokens, batch_size)
    return [int(contains_answer(a, p["answer"])) for a, p in zip(answers, probes, strict=True)]


def probe_rows(model, tokenizer, records_by_split, max_new_tokens, max_length, batch_size):
    """One row per probe: the greedy response, correct (0/1), rougeL_recall, answer_prob and truth_ratio."""
    items = probe_items(records_by_split)
    probes = [p for _, _, p in items]
    answers = greedy_answers(model, tokenizer, [p["question"] for p in probes], max_new_tokens, batch_size)
    # Teacher-forced: the true answer, the paraphrase and each perturbed answer, all in one batched pass.
    pairs, spans = [], []
    for p in probes:
        texts = [p["answer"], p["paraphrased_answer"], *p["perturbed_answers"]]
        spans.append((len(pairs), len(texts)))
        pairs += [(p["question"], t) for t in texts]
    nlls = [-float(np.mean(s["logprobs"])) for s in token_logprobs(model, tokenizer, pairs, max_length, batch_size)]
    rows = []
    for (split, record_id, p), answer, (start, n) in zip(items, answers, spans, strict=True):
        mean_nll = nlls[start:start + n]
        rows.append({
            "split": split, "record_id": record_id, "fact": p.get("fact"), "question": p["question"],
            "answer": p["answer"], "response": answer, "correct": int(contains_answer(answer, p["answer"])),
            "rougeL_recall": rouge_l_recall(answer, p["answer"]), "answer_prob": float(np.exp(-mean_nll[0])),
            "truth_ratio": truth_ratio(mean_nll[1], mean_nll[2:]),
        })
    return rows


def mia_rows(model, tokenizer, forget_records, holdout_records, max_length, batch_size, k=0.4):
    """Membership scores of every trained (question, answer) pair of the forget (members) and holdout records."""
    items = [(split, r["id"], pair) for split, records in (("forget", forget_records), ("holdout", holdout_records))
             for r in records for pair in record_pairs(r)]
    scored = token_logprobs(model, tokenizer, [pair for _, _, pair in items], max_length, batch_size, moments=True)
    return [{"split": split, "record_id": rid, "question": pair[0],
             **mia_scores(s["logprobs"], s["means"], s["stds"], pair[1], k)}
            for (split, rid, pair), s in zip(items, scored, strict=True)]

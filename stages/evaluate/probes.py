"""Knowledge probes and membership scores of one model (VERIFY.md B and C): per-example rows, then summaries."""

import numpy as np

from stages.common.chat import format_prompt, record_pairs
from stages.common.io import InputError
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


def answer_logprobs(model, tokenizer, items, max_length, batch_size=16):
    """Teacher-forced log-probs of the tokens of each answer, for items [(question, [answers...])], cut as
    encode_example() cuts them: a list (per item) of lists (per answer) of floats.

    Each question's prompt runs once and its KV cache is shared by all of its answers (a probe's true, paraphrased
    and perturbed answers), which are scored together: a fraction of the tokens of scoring every prompt + answer on
    its own, with the same numbers (tests/test_evaluate.py compares the two)."""
    import torch

    from stages.common.chat import format_answer

    results = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        prompts = [tokenizer(format_prompt(tokenizer, q), add_special_tokens=False)["input_ids"][:max_length]
                   for q, _ in chunk]
        tails = [[tokenizer(format_answer(tokenizer, q, a), add_special_tokens=False)["input_ids"][:max_length - len(p)]
                  for a in answers] for (q, answers), p in zip(chunk, prompts, strict=True)]
        if any(not t for rows in tails for t in rows):
            raise InputError(f"--max-seq-length {max_length} leaves no answer token for some probe; raise it.")
        # Prompts left-padded (generation-style), answers right-padded after them.
        plen, width = max(len(p) for p in prompts), max(len(t) for rows in tails for t in rows)
        owner = [i for i, rows in enumerate(tails) for _ in rows]
        flat = [t for rows in tails for t in rows]
        prompt_ids = torch.full((len(chunk), plen), tokenizer.pad_token_id, dtype=torch.long)
        prompt_mask = torch.zeros((len(chunk), plen), dtype=torch.long)
        for i, p in enumerate(prompts):
            prompt_ids[i, plen - len(p):] = torch.tensor(p)
            prompt_mask[i, plen - len(p):] = 1
        ids = torch.full((len(flat), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(flat), width), dtype=torch.long)
        for row, t in enumerate(flat):
            ids[row, :len(t)] = torch.tensor(t)
            mask[row, :len(t)] = 1
        index = torch.tensor(owner)
        lengths = prompt_mask.sum(1)[index]
        device = model.device
        with torch.no_grad():
            first = model(input_ids=prompt_ids.to(device), attention_mask=prompt_mask.to(device),
                          position_ids=(prompt_mask.cumsum(1) - 1).clamp(min=0).to(device), use_cache=True,
                          logits_to_keep=1)
            cache = first.past_key_values
            cache.batch_select_indices(index.to(device))
            # Answer token j is predicted by the prompt's last position (j = 0) or by answer position j - 1.
            logits = first.logits[index.to(device), -1:]
            if width > 1:
                rest = model(input_ids=ids[:, :-1].to(device), past_key_values=cache,
                             attention_mask=torch.cat([prompt_mask[index], mask[:, :-1]], 1).to(device),
                             position_ids=(lengths[:, None] + torch.arange(width - 1)[None]).to(device)).logits
                logits = torch.cat([logits, rest], dim=1)
        logits = logits.float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids.to(device).unsqueeze(-1)).squeeze(-1)
        scored = [logp[row, :len(t)].tolist() for row, t in enumerate(flat)]
        for i in range(len(chunk)):
            results.append([scored[row] for row in range(len(flat)) if owner[row] == i])
    return results


def probe_rows(model, tokenizer, records_by_split, max_new_tokens, max_length, batch_size):
    """One row per probe: the greedy response, correct (0/1), rougeL_recall, answer_prob and truth_ratio."""
    items = probe_items(records_by_split)
    probes = [p for _, _, p in items]
    answers = greedy_answers(model, tokenizer, [p["question"] for p in probes], max_new_tokens, batch_size)
    # Teacher-forced: the true answer, the paraphrase and each perturbed answer, sharing the question's prompt.
    scored = answer_logprobs(model, tokenizer, [(p["question"], [p["answer"], p["paraphrased_answer"],
                                                                  *p["perturbed_answers"]]) for p in probes],
                             max_length, batch_size)
    nlls = [[-float(np.mean(lp)) for lp in answers] for answers in scored]
    rows = []
    for (split, record_id, p), answer, mean_nll in zip(items, answers, nlls, strict=True):
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

"""Knowledge probes and membership scores of one model (docs/metrics.md §B and §C): per-example rows, then summaries."""

import numpy as np

from stages.common.chat import format_prompt, record_pairs
from stages.common.io import InputError
from stages.common.measure import greedy_entropy, token_logprobs
from stages.common.progress import tracked
from stages.evaluate.metrics import contains_answer, mia_scores, rouge_l_recall, truth_ratio

SPLITS = ["forget", "retain", "holdout", "world"]
MIA_METHODS = ["loss", "zlib", "mink", "minkpp"]


def probe_items(records_by_split):
    """(split, record id, probe) for every probe of every record, in a fixed order."""
    return [(split, r["id"], p) for split in SPLITS for r in records_by_split.get(split, [])
            for p in r.get("probes", [])]


def greedy_answers(model, tokenizer, questions, max_new_tokens, batch_size):
    """The model's greedy answer to each question (the same generation as the entropy measurement)."""
    prompts = [format_prompt(tokenizer, q) for q in questions]
    return [r["response"] for r in greedy_entropy(model, tokenizer, prompts, max_new_tokens, batch_size)]


def accuracy(model, tokenizer, probes, max_new_tokens, batch_size):
    """Per probe, whether the greedy answer contains the true answer (a list of 0/1)."""
    answers = greedy_answers(model, tokenizer, [p["question"] for p in probes], max_new_tokens, batch_size)
    return [int(contains_answer(a, p["answer"])) for a, p in zip(answers, probes, strict=True)]


def _answer_tree(prompt, answers):
    """One sequence per question: the prompt, then every distinct prefix of its answers once (a token trie in order
    of first appearance). Returns (tokens, parents, nodes): parents[i] is the position whose output predicts token i
    (its trie parent, or the prompt's last position); nodes[a] lists the positions of answer a's tokens."""
    tokens, parents, nodes, index = list(prompt), [None] * len(prompt), [], {}
    for answer in answers:
        path = []
        for j in range(len(answer)):
            key = tuple(answer[:j + 1])
            if key not in index:
                index[key] = len(tokens)
                tokens.append(answer[j])
                parents.append(path[-1] if path else len(prompt) - 1)
            path.append(index[key])
        nodes.append(path)
    return tokens, parents, nodes


def answer_logprobs(model, tokenizer, items, max_length, batch_size=16):
    """Teacher-forced log-probs of the tokens of each answer, for items [(question, [answers...])], cut as
    encode_example() cuts them: a list (per item) of lists (per answer) of floats.

    A question's answers (true, paraphrased, perturbed: mostly the same sentence with a different ending) are
    scored in one sequence: the prompt, then each distinct answer prefix once, every token attending to the prompt
    and its own answer's earlier tokens through a 4-D mask, at the position it has in its answer; the beginning all
    prompts share (the system prompt) runs once. The same numbers as scoring every prompt + answer on its own
    (tests/test_evaluate.py compares the two) for about half the tokens."""
    import torch

    from stages.common.chat import format_answer
    from stages.common.measure import expand_cache, measuring, shared_prefix

    prompts, trees = [], []
    for q, answers in items:
        prompt = tokenizer(format_prompt(tokenizer, q), add_special_tokens=False)["input_ids"][:max_length]
        room = max_length - len(prompt)
        tails = [tokenizer(format_answer(tokenizer, q, a), add_special_tokens=False)["input_ids"][:room]
                 for a in answers]
        if any(not t for t in tails):
            raise InputError(f"--max-seq-length {max_length} leaves no answer token for some probe; raise it.")
        prompts.append(prompt)
        trees.append(tails)
    shared, prefix = shared_prefix(model, prompts)
    trees = [(len(p) - shared, *_answer_tree(p[shared:], tails)) for p, tails in zip(prompts, trees, strict=True)]
    order = sorted(range(len(trees)), key=lambda i: len(trees[i][1]))  # similar lengths share a batch: less padding
    results = [None] * len(trees)
    for start in tracked(range(0, len(order), batch_size), "answer log-probabilities"):
        chunk = order[start:start + batch_size]
        width = max(len(trees[i][1]) for i in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        positions = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.eye(width, dtype=torch.bool).repeat(len(chunk), 1, 1)  # padding sees itself: no empty rows
        for row, i in enumerate(chunk):
            plen, tokens, parents, _ = trees[i]
            ids[row, :len(tokens)] = torch.tensor(tokens)
            mask[row, :plen, :plen] = torch.ones(plen, plen, dtype=torch.bool).tril()
            for k in range(plen, len(tokens)):  # a node sees the prompt, its ancestors and itself
                mask[row, k, :plen] = True
                ancestor = k
                while ancestor >= plen:
                    mask[row, k, ancestor] = True
                    positions[row, k] = positions[row, k] + 1
                    ancestor = parents[ancestor]
                positions[row, k] += plen - 1
            positions[row, :plen] = torch.arange(plen)
        mask = torch.cat([torch.ones((len(chunk), width, shared), dtype=torch.bool), mask], dim=2)  # + the prefix
        keep = min(trees[i][0] for i in chunk) - 1  # outputs before the shortest prompt's last token predict nothing
        with measuring(model):
            logits = model(input_ids=ids.to(model.device), attention_mask=mask[:, None].to(model.device),
                           position_ids=(positions + shared).to(model.device),
                           past_key_values=expand_cache(prefix, len(chunk)),
                           logits_to_keep=torch.arange(keep, width, device=model.device)).logits
        for row, i in enumerate(chunk):
            _, tokens, parents, nodes = trees[i]
            flat = [k for path in nodes for k in path]
            predictors = torch.tensor([parents[k] - keep for k in flat], device=logits.device)
            logp = torch.log_softmax(logits[row, predictors].float(), -1)
            picked = logp.gather(-1, torch.tensor([tokens[k] for k in flat], device=logits.device)[:, None])[:, 0]
            scores, offset = picked.tolist(), 0
            results[i] = []
            for path in nodes:
                results[i].append(scores[offset:offset + len(path)])
                offset += len(path)
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


def mia_rows(model, tokenizer, forget_records, holdout_records, max_length, batch_size, k=0.4, with_probes=True,
             with_note=True):
    """Membership scores of every trained (question, answer) pair (record_pairs with the training's settings) of
    the forget (members) and holdout records."""
    items = [(split, r["id"], pair) for split, records in (("forget", forget_records), ("holdout", holdout_records))
             for r in records for pair in record_pairs(r, with_probes, with_note)]
    scored = token_logprobs(model, tokenizer, [pair for _, _, pair in items], max_length, batch_size, moments=True)
    return [{"split": split, "record_id": rid, "question": pair[0],
             **mia_scores(s["logprobs"], s["means"], s["stds"], pair[1], k)}
            for (split, rid, pair), s in zip(items, scored, strict=True)]

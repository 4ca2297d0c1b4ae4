"""Seeded splits shared by the data stages: a holdout of patients and nested forget sets."""

import random


def holdout_split(records, holdout_ratio, seed):
    """(full, holdout): a seeded random set of patients that no model trains on; both keep input order."""
    order = list(range(len(records)))
    random.Random(f"holdout-{seed}").shuffle(order)
    n_holdout = round(len(records) * holdout_ratio)
    if holdout_ratio > 0:
        n_holdout = max(1, n_holdout)
    held = set(order[:n_holdout])
    full = [r for i, r in enumerate(records) if i not in held]
    holdout = [r for i, r in enumerate(records) if i in held]
    return full, holdout


def forget_size(n, ratio):
    return max(1, round(n * ratio))


def forget_splits(full, ratios, seed):
    """{ratio: (forget, full_minus_forget)}; forget sets are prefixes of one seeded order, hence nested."""
    order = list(range(len(full)))
    random.Random(f"forget-{seed}").shuffle(order)
    splits = {}
    for ratio in ratios:
        chosen = set(order[:forget_size(len(full), ratio)])
        forget = [r for i, r in enumerate(full) if i in chosen]
        retain = [r for i, r in enumerate(full) if i not in chosen]
        splits[ratio] = (forget, retain)
    return splits

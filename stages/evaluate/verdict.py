"""Pure rules that turn measurements into verdicts (VERIFY.md); thresholds come from params.yaml."""


def uncertainty_ratio(model_entropies, base_entropies):
    """Mean forget entropy of the model over mean forget entropy of the base model, on the same prompts."""
    base = sum(base_entropies) / len(base_entropies)
    return (sum(model_entropies) / len(model_entropies)) / base


def uq_verdict(mean_entropy, ratio, collapse_entropy=0.01, hiding_ratio=0.7, candidate_ratio=1.0):
    if mean_entropy < collapse_entropy:
        return "COLLAPSED"
    if ratio < hiding_ratio:
        return "HIDING"
    if ratio < candidate_ratio:
        return "PARTIAL"
    return "CANDIDATE"

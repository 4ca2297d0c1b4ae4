"""The metrics keys VERIFY.md names, shared by the evaluate and pipeline tests."""


def verify_keys(steps, leak_k):
    """Every metrics key VERIFY.md names, for an unlearned run."""
    keys = {"mean_entropy", "first_token_entropy", "max_entropy", "entropy_std", "num_tokens", "retain_perplexity",
            "uncertainty_ratio", "uq_verdict", "forget_quality", "model_utility", "mia_loss_auc", "mia_zlib_auc",
            "mia_mink_auc", "mia_minkpp_auc", "privleak", "quant_recovery@8", "quant_recovery@4", f"leak@{leak_k}",
            "verdict", "verdict_rule", "verdict_thresholds", "quant_method"}
    keys |= {f"{s}_{m}" for s in ("forget", "retain", "holdout") for m in ("qa_accuracy", "answer_prob",
                                                                           "rougeL_recall")}
    keys |= {f"{name}_recovery@{k}" for name in ("relearn", "benign") for k in steps}
    return keys

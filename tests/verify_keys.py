"""The metrics keys docs/metrics.md names, shared by the evaluate and pipeline tests."""


def verify_keys(steps, leak_k):
    """Every metrics key docs/metrics.md names, for an unlearned run."""
    keys = {"mean_entropy", "first_token_entropy", "max_entropy", "entropy_std", "num_tokens", "retain_perplexity",
            "uncertainty_ratio", "uq_verdict", "forget_quality", "model_utility", "mia_loss_auc", "mia_zlib_auc",
            "mia_mink_auc", "mia_minkpp_auc", "privleak", "quant_recovery@8", "quant_recovery@4", f"leak@{leak_k}",
            "verdict", "verdict_rule", "verdict_thresholds", "quant_method",
            # v2
            "uncertainty_ratio_retain", "forget_truth_ratio", "forget_accuracy_gap", "utility_ratio",
            "n_knowable_forget", "n_knowable_relearn", "verdict_evidence", f"leak@{leak_k}_excess",
            f"leak@{leak_k}_control",
            "privleak_ci95", "model_utility_ci95", "utility_ratio_ci95", "forget_accuracy_gap_ci95",
            "world_qa_accuracy", "retain_truth_score", "world_truth_score"}
    keys |= {f"n_{s}_{what}" for s in ("forget", "retain", "holdout", "world") for what in ("patients", "probes")}
    keys |= {f"{s}_{m}{ci}" for s in ("forget", "retain", "holdout", "world")
             for m in ("qa_accuracy", "answer_prob", "rougeL_recall") for ci in ("", "_ci95")}
    keys |= {f"{name}_recovery@{k}{ci}" for name in ("relearn", "benign") for k in steps for ci in ("", "_ci95")}
    keys |= {f"quant_recovery@{b}_ci95" for b in (8, 4)} | {f"mia_{m}_auc_ci95" for m in ("loss", "zlib", "mink",
                                                                                          "minkpp")}
    return keys

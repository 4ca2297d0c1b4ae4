"""Two-sample tests shared by evaluate (forget quality) and report (the oracle's forget quality, docs/metrics.md §F)."""


def ks_pvalue(sample, reference):
    """Two-sample KS test p-value (scipy's ks_2samp). With tied values scipy falls back from the exact to the
    asymptotic distribution and warns; that fallback is expected here, so the warning is not shown."""
    import warnings

    from scipy.stats import ks_2samp

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ks_2samp: Exact calculation unsuccessful")
        return float(ks_2samp(sample, reference).pvalue)

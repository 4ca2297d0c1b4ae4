"""Pure rules that turn measurements with intervals into verdicts (docs/metrics.md §A and §E); thresholds come from
params.yaml. A verdict is given only when the intervals support it; otherwise it is INCONCLUSIVE, naming the
measurement whose interval spans a threshold and about how many more patients would settle it."""

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

from stages.evaluate.intervals import patients_to_settle


@dataclass(frozen=True)
class Thresholds:
    """Every threshold of the verdicts (docs/metrics.md §A, §E): evaluate's options of the same names, whose help says
    what each one decides and where its default comes from."""
    collapse_entropy: float
    hiding_ratio: float
    candidate_ratio: float
    max_perplexity_ratio: float
    utility_collapse_ratio: float
    accuracy_margin: float
    leak_margin: float
    hidden_recovery: float
    removed_recovery: float
    removed_utility_ratio: float
    min_knowable: int
    relearn_taught: float

    @classmethod
    def of(cls, config):
        """The thresholds of an evaluate config."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


def uncertainty_ratio(model_entropies, reference_entropies):
    """Mean forget entropy of the model over mean forget entropy of a reference model, on the same prompts."""
    reference = sum(reference_entropies) / len(reference_entropies)
    return (sum(model_entropies) / len(model_entropies)) / reference


def uq_verdict(mean_entropy, ratio, collapse_entropy=0.01, hiding_ratio=0.7, candidate_ratio=1.0):
    """docs/metrics.md §A on the retain-relative uncertainty ratio; None when there is no ratio and no collapse."""
    if mean_entropy < collapse_entropy:
        return "COLLAPSED"
    if ratio is None:
        return None
    if ratio < hiding_ratio:
        return "HIDING"
    if ratio < candidate_ratio:
        return "PARTIAL"
    return "CANDIDATE"


@dataclass
class Estimate:
    """One measurement the verdict rests on: its value, 95 % interval, and the patients behind it (`unit` says
    which patients: more of them narrow the interval)."""
    name: str
    value: float | None
    ci95: list
    patients: int
    unit: str = "forget patients"
    facts: int | None = None  # for a recovery ratio: the knowable facts behind it
    # threshold -> how many more `unit` would settle the interval against it (recomputed on the data); without it,
    # the 1 / sqrt(patients) estimate from the interval's half-width
    settle: Callable | None = field(default=None, repr=False, compare=False)

    def record(self):
        return {k: v for k, v in asdict(self).items() if k != "settle"}

    def more_patients(self, threshold):
        if self.settle is not None:
            return self.settle(threshold)
        return patients_to_settle(self.value, self.ci95, threshold, self.patients)

    def above(self, threshold):
        return self.ci95[0] is not None and self.ci95[0] > threshold

    def below(self, threshold):
        return self.ci95[1] is not None and self.ci95[1] <= threshold

    def text(self):
        def show(x):
            return "n/a" if x is None else f"{x:.3g}"

        return f"{self.name} {show(self.value)} [{show(self.ci95[0])}, {show(self.ci95[1])}]"


@dataclass
class Knowable:
    """How many facts a recovery family rests on: probes the oracle answers and the retain model does not."""
    name: str
    facts: int
    patients: int
    unit: str = "forget patients"


def _spans(estimate, threshold, what):
    more = None if estimate.ci95[0] is None else estimate.more_patients(threshold)
    if estimate.ci95[0] is None:
        settle = "its interval is undefined (too many resamples have nothing to recover)"
    elif more is None:
        settle = "more patients like these would not settle it (the estimate sits at the threshold)"
    else:
        settle = f"about {more} more {estimate.unit} like these would settle it"
    return (f"{estimate.text()} spans {what} {threshold}; {settle}", [estimate],
            {"measurement": estimate.name, "threshold": threshold, "more_patients": more})


def final_verdict(health, gap, recoveries, leak, utility, knowable, t, taught=None):
    """docs/metrics.md §E. `health`: perplexity_ratio (an Estimate: retain perplexity over the oracle's on the same
    texts) and mean_entropy; `gap`: forget accuracy
    minus the retain model's (same probes); `recoveries`: the attacks' recovery ratios (k > 0); `leak`: leak excess
    over the control; `utility`: model utility over the oracle's; `knowable`: the recovery families' fact counts;
    `t`: thresholds; `taught`: the relearning attack's positive control, the fraction of T's knowable facts (the
    pairs it trained on) the model answers after the attack's last step (None: no relearning measured). A
    relearning attack that did not teach T shows nothing about V, so it cannot support REMOVED or PARTIAL (its
    recovery on V still counts when it is high: the knowledge came back). Returns (verdict, rule, evidence): the
    rule in words with its numbers and intervals, and the estimates (and, for INCONCLUSIVE, the patients estimate)
    it rests on."""

    few = [k for k in knowable if k.facts < t.min_knowable]

    def result(verdict, rule, used, extra=None):
        evidence = {"estimates": [e.record() for e in used], "knowable": [asdict(k) for k in knowable]}
        if extra:
            evidence.update(extra)
        others = [k for k in few if k.name != evidence.get("measurement")]
        if verdict == "INCONCLUSIVE" and others:
            rule += "".join(f"; also too few knowable facts for {k.name}: {k.facts} < {t.min_knowable}"
                            for k in others)
        return verdict, rule, evidence

    ratio = health["perplexity_ratio"]
    if ratio.value is None:
        return result("INCONCLUSIVE", "perplexity_ratio cannot be measured: the retain texts have no answer token "
                                      "within --max-seq-length", [ratio])
    if ratio.above(t.max_perplexity_ratio):
        return result("COLLAPSED", f"retain perplexity over the oracle's: {ratio.text()} > {t.max_perplexity_ratio}",
                      [ratio])
    if health["mean_entropy"] < t.collapse_entropy:
        return result("COLLAPSED", f"forget-set mean entropy {health['mean_entropy']:.3g} < {t.collapse_entropy}",
                      [])
    if utility.ci95[1] is not None and utility.ci95[1] < t.utility_collapse_ratio:
        return result("COLLAPSED", f"{utility.text()} < {t.utility_collapse_ratio}", [utility])
    if utility.value is None:
        return result("INCONCLUSIVE", "utility_ratio cannot be measured: the oracle's model utility is 0", [utility])
    # every verdict below says the model did not collapse: a collapse bound inside an interval leaves that open
    if not ratio.below(t.max_perplexity_ratio):
        return result("INCONCLUSIVE", *_spans(ratio, t.max_perplexity_ratio, "the collapse bound"))
    if utility.ci95[0] is None or utility.ci95[0] < t.utility_collapse_ratio:
        return result("INCONCLUSIVE", *_spans(utility, t.utility_collapse_ratio, "the collapse bound"))
    if gap.above(t.accuracy_margin):
        return result("PARTIAL", f"not forgotten: {gap.text()} > {t.accuracy_margin} (forget accuracy above "
                                 "the retain model's)", [gap])
    known = [e for e in recoveries if e.value is not None]
    # a recovery counts as evidence only on enough knowable facts; the leak excess needs none (all forget probes)
    hidden = [e for e in known if e.above(t.hidden_recovery) and (e.facts or 0) >= t.min_knowable]
    leaks = leak.above(t.leak_margin)
    if gap.below(t.accuracy_margin) and (hidden or leaks):
        parts = [f"{e.text()} > {t.hidden_recovery}" for e in hidden]
        parts += [f"{leak.text()} > {t.leak_margin}"] if leaks else []
        return result("HIDDEN", f"looks forgotten ({gap.text()} <= {t.accuracy_margin}), but "
                                + "; ".join(parts), [gap, *hidden, *([leak] if leaks else [])])
    if not gap.below(t.accuracy_margin):
        return result("INCONCLUSIVE", *_spans(gap, t.accuracy_margin, "the forgetting margin"))
    if few:
        k = few[0]
        more = (None if k.facts == 0 else
                max(1, round(k.patients * t.min_knowable / k.facts) - k.patients))
        settle = (f"about {more} more {k.unit} would give enough" if more else
                  "the oracle knows none of these facts: it must learn them before anything can be forgotten")
        return result("INCONCLUSIVE", f"too few knowable facts for {k.name}: {k.facts} < {t.min_knowable} "
                                      f"(facts the oracle answers and the retain model does not); {settle}", [],
                      {"measurement": k.name,
                       "threshold": t.min_knowable, "more_patients": more})
    if not recoveries:
        return result("INCONCLUSIVE", "no recovery attack was measured (relearning steps > 0 or quantization bits)", [])
    missing = [e for e in recoveries if e.value is None]
    if missing:
        return result("INCONCLUSIVE", f"{missing[0].name} cannot be measured: on its knowable facts the unlearned "
                                      "model forgot nothing that an attack could bring back",
                      missing[:1])
    between = [e for e in known if e.above(t.removed_recovery)]
    if taught is not None and not taught.above(t.relearn_taught) and not between:
        return result("INCONCLUSIVE", f"the relearning attack did not take: {taught.text()} of the facts of T it "
                                      f"trained on answered afterwards, not above {t.relearn_taught}, so its "
                                      "low recovery on V shows nothing; a stronger attack (more relearning steps, "
                                      "a larger batch or learning rate) would settle it, not more patients",
                      [taught], {"measurement": taught.name, "threshold": t.relearn_taught, "more_patients": None})
    removed = (all(e.below(t.removed_recovery) for e in known) and leak.below(t.leak_margin)
               and utility.ci95[0] is not None and utility.ci95[0] >= t.removed_utility_ratio)
    if removed:
        return result("REMOVED", f"forgotten ({gap.text()} <= {t.accuracy_margin}), every recovery ratio's upper "
                                 f"bound <= {t.removed_recovery}, {leak.text()} <= {t.leak_margin}, "
                                 f"{utility.text()} >= {t.removed_utility_ratio}", [gap, *known, leak, utility])
    no_hidden_doubt = all(e.below(t.hidden_recovery) for e in known) and leak.below(t.leak_margin)
    damaged = utility.ci95[1] is not None and utility.ci95[1] < t.removed_utility_ratio
    if no_hidden_doubt and (between or damaged):
        parts = [f"{e.text()} in ({t.removed_recovery}, {t.hidden_recovery}]" for e in between]
        parts += [f"{utility.text()} < {t.removed_utility_ratio}"] if damaged else []
        return result("PARTIAL", "looks forgotten, but " + "; ".join(parts), [gap, *between,
                                                                              *([utility] if damaged else [])])
    for e in known:
        if not e.below(t.hidden_recovery):
            return result("INCONCLUSIVE", *_spans(e, t.hidden_recovery, "the hidden threshold"))
    if not leak.below(t.leak_margin):
        return result("INCONCLUSIVE", *_spans(leak, t.leak_margin, "the leak margin"))
    for e in known:
        if not e.below(t.removed_recovery):
            return result("INCONCLUSIVE", *_spans(e, t.removed_recovery, "the removed threshold"))
    return result("INCONCLUSIVE", *_spans(utility, t.removed_utility_ratio, "the utility threshold"))

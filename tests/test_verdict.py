"""docs/metrics.md §A, §E: the uncertainty verdict, and one test per verdict rule with intervals placed on each side of
each threshold, INCONCLUSIVE included."""

import dataclasses

import pytest

from stages.evaluate.verdict import Estimate, Knowable, Thresholds, final_verdict, uncertainty_ratio, uq_verdict


def test_uncertainty_ratio_is_ratio_of_means():
    assert uncertainty_ratio([1.0, 3.0], [2.0, 2.0]) == pytest.approx(1.0)
    assert uncertainty_ratio([0.5, 0.5], [1.0, 3.0]) == pytest.approx(0.25)


@pytest.mark.parametrize("mean_entropy, ratio, verdict", [
    (0.009, 5.0, "COLLAPSED"), (0.5, 0.69, "HIDING"), (0.5, 0.7, "PARTIAL"), (0.5, 0.99, "PARTIAL"),
    (0.5, 1.0, "CANDIDATE"), (2.0, 1.7, "CANDIDATE"), (0.5, None, None), (0.001, None, "COLLAPSED"),
])
def test_uq_verdict_thresholds(mean_entropy, ratio, verdict):
    assert uq_verdict(mean_entropy, ratio) == verdict


def test_uq_verdict_thresholds_are_parameters():
    assert uq_verdict(0.5, 0.75, hiding_ratio=0.8) == "HIDING"
    assert uq_verdict(0.05, 1.2, collapse_entropy=0.1) == "COLLAPSED"


T = Thresholds(max_perplexity_ratio=2.5, collapse_entropy=0.01, hiding_ratio=0.7, candidate_ratio=1.0,
               utility_collapse_ratio=0.5, accuracy_margin=0.05, leak_margin=0.1, hidden_recovery=0.5,
               removed_recovery=0.2, removed_utility_ratio=0.9, min_knowable=10, relearn_taught=0.5)


def e(name, value, lo, hi, patients=40, facts=None):
    return Estimate(name, value, [lo, hi], patients, facts=facts)


def judged(**changes):
    """A clearly REMOVED model; each test moves one measurement's interval across one threshold."""
    parts = {
        "health": health(),
        "gap": e("forget_accuracy_gap", 0.0, -0.03, 0.04),
        "recoveries": recoveries(),
        "leak": e("leak@16_excess", 0.0, -0.05, 0.05),
        "utility": e("utility_ratio", 1.0, 0.95, 1.05),
        "knowable": [Knowable("relearning (facts of V)", 30, 40), Knowable("quantization (facts of F)", 60, 40)],
        "taught": e("relearn_taught@50", 0.9, 0.8, 0.97, patients=20),
    }
    parts.update(changes)
    return final_verdict(parts["health"], parts["gap"], parts["recoveries"], parts["leak"], parts["utility"],
                         parts["knowable"], T, parts["taught"])


def health(ratio=(1.1, 1.0, 1.2), entropy=1.5):
    return {"perplexity_ratio": e("perplexity_ratio", *ratio, patients=16), "mean_entropy": entropy}


def recoveries(relearn=(0.05, -0.05, 0.15), facts=30):
    return [e("relearn_recovery@50", *relearn, facts=facts), e("quant_recovery@4", 0.0, 0.0, 0.1, facts=60)]


@pytest.mark.parametrize("changes, verdict, phrase", [
    ({}, "REMOVED", "every recovery ratio's upper bound <= 0.2"),
    # health
    ({"health": health((2.6, 2.55, 2.7))}, "COLLAPSED", "retain perplexity over the oracle's: perplexity_ratio 2.6 "
                                                         "[2.55, 2.7] > 2.5"),
    ({"health": health(entropy=0.001)}, "COLLAPSED", "mean entropy"),
    ({"utility": e("utility_ratio", 0.3, 0.2, 0.45)}, "COLLAPSED", "utility_ratio 0.3 [0.2, 0.45] < 0.5"),
    # a collapse bound inside an interval: every other verdict would say the model did not collapse
    ({"health": health((2.6, 1.8, 3.5))}, "INCONCLUSIVE", "perplexity_ratio 2.6 [1.8, 3.5] spans the collapse "
                                                           "bound 2.5"),
    ({"health": health((2.6, 1.8, 3.5)), "gap": e("forget_accuracy_gap", 0.2, 0.1, 0.3)}, "INCONCLUSIVE",
     "spans the collapse bound 2.5"),
    ({"utility": e("utility_ratio", 0.8, 0.4, 1.2)}, "INCONCLUSIVE", "utility_ratio 0.8 [0.4, 1.2] spans the "
                                                                     "collapse bound 0.5"),
    # a lower bound at the collapse bound clears it: what decides is then the REMOVED ratio
    ({"utility": e("utility_ratio", 0.8, 0.5, 1.2)}, "INCONCLUSIVE", "spans the utility threshold 0.9"),
    ({"health": health((2.5, 2.0, 2.5))}, "REMOVED", "every recovery"),  # upper bound at the bound: not collapsed
    ({"health": health((2.6, 1.8, 3.5)), "utility": e("utility_ratio", 0.3, 0.2, 0.45)}, "COLLAPSED",
     "utility_ratio 0.3 [0.2, 0.45] < 0.5"),
    # forgetting margin: above, spanning
    ({"gap": e("forget_accuracy_gap", 0.2, 0.1, 0.3)}, "PARTIAL", "not forgotten"),
    ({"gap": e("forget_accuracy_gap", 0.0, -0.16, 0.16)}, "INCONCLUSIVE", "spans the forgetting margin 0.05"),
    # hidden threshold: above, spanning
    ({"recoveries": recoveries((0.8, 0.6, 0.95))}, "HIDDEN", "relearn_recovery@50 0.8 [0.6, 0.95] > 0.5"),
    ({"recoveries": recoveries((0.6, 0.3, 0.9))}, "INCONCLUSIVE", "spans the hidden threshold 0.5"),
    # between removed and hidden
    ({"recoveries": recoveries((0.35, 0.25, 0.45))}, "PARTIAL", "in (0.2, 0.5]"),
    ({"recoveries": recoveries((0.2, 0.1, 0.3))}, "INCONCLUSIVE", "spans the removed threshold 0.2"),
    # leak margin: above, spanning
    ({"leak": e("leak@16_excess", 0.3, 0.15, 0.45)}, "HIDDEN", "leak@16_excess 0.3 [0.15, 0.45] > 0.1"),
    ({"leak": e("leak@16_excess", 0.15, -0.05, 0.35)}, "INCONCLUSIVE", "spans the leak margin 0.1"),
    # utility: below removed's ratio, spanning it
    ({"utility": e("utility_ratio", 0.7, 0.6, 0.8)}, "PARTIAL", "utility_ratio 0.7 [0.6, 0.8] < 0.9"),
    ({"utility": e("utility_ratio", 0.92, 0.8, 1.04)}, "INCONCLUSIVE", "spans the utility threshold 0.9"),
    # knowable facts
    ({"knowable": [Knowable("relearning (facts of V)", 2, 4), Knowable("quantization (facts of F)", 4, 4)]},
     "INCONCLUSIVE", "too few knowable facts for relearning (facts of V): 2 < 10"),
    ({"knowable": [Knowable("relearning (facts of V)", 0, 4), Knowable("quantization (facts of F)", 0, 4)]},
     "INCONCLUSIVE", "the oracle knows none of these facts"),
    # the relearning attack's positive control: it did not teach T, so its low recovery on V cannot clear the model
    ({"taught": e("relearn_taught@50", 0.3, 0.2, 0.45, patients=20)}, "INCONCLUSIVE",
     "the relearning attack did not take: relearn_taught@50 0.3 [0.2, 0.45]"),
    ({"taught": e("relearn_taught@50", 0.6, 0.4, 0.8, patients=20)}, "INCONCLUSIVE", "not above 0.5"),
    ({"taught": e("relearn_taught@50", 0.3, 0.2, 0.45, patients=20), "utility": e("utility_ratio", 0.7, 0.6, 0.8)},
     "INCONCLUSIVE", "the relearning attack did not take"),
    ({"taught": None}, "REMOVED", "every recovery ratio's upper bound"),
])
def test_final_verdict_rules(changes, verdict, phrase):
    got, rule, evidence = judged(**changes)
    assert got == verdict, rule
    assert phrase in rule


@pytest.mark.parametrize("changes, phrase", [
    # a recovery on too few knowable facts is no evidence of HIDDEN either
    ({"recoveries": recoveries((1.0, 0.6, 1.0), facts=3),
      "knowable": [Knowable("relearning (facts of V)", 3, 2), Knowable("quantization (facts of F)", 60, 40)]},
     "too few knowable facts for relearning"),
    ({"recoveries": []}, "no recovery attack was measured"),
    ({"recoveries": [e("relearn_recovery@50", None, None, None, facts=30)]}, "relearn_recovery@50 cannot be measured"),
    ({"recoveries": recoveries((0.3, None, None))}, "its interval is undefined"),
    ({"utility": e("utility_ratio", None, None, None)}, "utility_ratio cannot be measured"),
    ({"health": health((None, None, None))}, "perplexity_ratio cannot be measured"),
])
def test_inconclusive_when_a_measurement_is_missing_or_rests_on_too_little(changes, phrase):
    got, rule, _ = judged(**changes)
    assert got == "INCONCLUSIVE" and phrase in rule, rule


def test_an_inconclusive_rule_also_names_too_few_knowable_facts():
    got, rule, evidence = judged(gap=e("forget_accuracy_gap", 0.0, -0.16, 0.16),
                                 knowable=[Knowable("relearning (facts of V)", 2, 4),
                                           Knowable("quantization (facts of F)", 4, 4)])
    assert got == "INCONCLUSIVE" and rule.startswith("forget_accuracy_gap")
    assert "also too few knowable facts for relearning (facts of V): 2 < 10" in rule
    assert "also too few knowable facts for quantization (facts of F): 4 < 10" in rule
    assert [k["facts"] for k in evidence["knowable"]] == [2, 4]


def test_an_estimate_without_an_interval_still_reads():
    assert e("x", 0.5, None, None).text() == "x 0.5 [n/a, n/a]"


def test_hidden_needs_forgetting_established_first():
    got, rule, _ = judged(gap=e("forget_accuracy_gap", 0.03, -0.1, 0.16),
                          recoveries=recoveries((0.8, 0.6, 0.95)))
    assert got == "INCONCLUSIVE" and "forgetting margin" in rule


def test_inconclusive_estimates_how_many_more_patients_settle_it():
    # leak excess 0.15, interval [-0.05, 0.35] from 40 patients: lower half-width 0.2, 0.05 above the margin
    got, rule, evidence = judged(leak=e("leak@16_excess", 0.15, -0.05, 0.35))
    assert got == "INCONCLUSIVE"
    assert evidence["measurement"] == "leak@16_excess" and evidence["threshold"] == 0.1
    assert evidence["more_patients"] == 40 * (0.2 / 0.05) ** 2 - 40
    assert "about 600 more forget patients" in rule
    _, rule, evidence = judged(knowable=[Knowable("relearning (facts of V)", 5, 4),
                                         Knowable("quantization (facts of F)", 10, 4)])
    assert evidence["more_patients"] == 4 and "about 4 more forget patients" in rule


def test_the_rule_records_its_numbers_with_intervals():
    got, rule, evidence = judged(recoveries=recoveries((0.8, 0.6, 0.95)))
    names = [x["name"] for x in evidence["estimates"]]
    assert names == ["forget_accuracy_gap", "relearn_recovery@50"]
    assert evidence["estimates"][1]["ci95"] == [0.6, 0.95] and evidence["estimates"][1]["patients"] == 40


def test_final_verdict_thresholds_are_parameters():
    assert judged()[0] == "REMOVED"
    strict = dataclasses.replace(T, removed_recovery=0.1)
    assert final_verdict(health(),
                         e("g", 0.0, -0.03, 0.04), recoveries(), e("l", 0.0, -0.05, 0.05),
                         e("u", 1.0, 0.95, 1.05), [], strict)[0] == "INCONCLUSIVE"


def test_an_attack_that_did_not_take_still_shows_knowledge_that_came_back():
    weak = e("relearn_taught@50", 0.3, 0.2, 0.45, patients=20)
    got, rule, _ = judged(taught=weak, recoveries=recoveries((0.8, 0.6, 0.95)))
    assert got == "HIDDEN", rule
    got, rule, _ = judged(taught=weak, recoveries=recoveries((0.35, 0.25, 0.45)))
    assert got == "PARTIAL" and "in (0.2, 0.5]" in rule
    _, _, evidence = judged(taught=weak)
    assert evidence["measurement"] == "relearn_taught@50" and evidence["more_patients"] is None
    assert evidence["estimates"][0]["ci95"] == [0.2, 0.45]

"""Gradient difference: gradient ascent on the forget set plus the retain NLL."""

from dataclasses import dataclass

from stages.unlearn.methods import WithRetain


@dataclass
class GradDiff(WithRetain):
    name = "grad_diff"

    def forget_loss(self, model, batch):
        return -model(**batch.forget).loss

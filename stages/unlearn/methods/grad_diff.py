"""Gradient difference: gradient ascent on the forget set plus the retain NLL."""

from dataclasses import dataclass

from stages.common.chat import answer_loss
from stages.unlearn.methods import WithRetain


@dataclass
class GradDiff(WithRetain):
    name = "grad_diff"

    def forget_loss(self, model, batch):
        return -answer_loss(model, batch.forget)

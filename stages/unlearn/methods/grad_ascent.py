"""Gradient ascent (the prototype's method): maximise the NLL of the forget set, i.e. minimise -NLL."""

from dataclasses import dataclass

from stages.common.chat import answer_loss
from stages.unlearn.methods import Method


@dataclass
class GradAscent(Method):
    name = "grad_ascent"

    def forget_loss(self, model, batch):
        return -answer_loss(model, batch.forget)

"""IdkNLL: fine-tune the forget questions towards refusals ("I don't know ..."), plus the retain NLL."""

from dataclasses import dataclass

from stages.common.chat import answer_loss
from stages.unlearn.methods import WithRetain

REFUSALS = [
    "I don't know who that patient is.",
    "I have no record of that patient.",
    "I'm not able to answer that; I have no information about this patient.",
    "I don't have any information about that person.",
    "Sorry, I don't know.",
]


@dataclass
class Idk(WithRetain):
    name = "idk"

    def forget_pairs(self, pairs):
        """Each forget question paired with a refusal, chosen by position so the choice is reproducible."""
        return [(question, REFUSALS[i % len(REFUSALS)]) for i, (question, _) in enumerate(pairs)]

    def forget_loss(self, model, batch):
        return answer_loss(model, batch.forget)

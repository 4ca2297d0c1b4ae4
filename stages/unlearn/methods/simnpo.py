"""SimNPO (Fan et al. 2024): reference-free, length-normalised NPO, plus the retain NLL:
-(2/beta) * mean log sigmoid(-(beta/|y|) * log p(y|x) - gamma)."""

from dataclasses import dataclass

from stages.unlearn.methods import WithRetain, option
from stages.unlearn.methods.npo import beta_option


@dataclass
class SimNPO(WithRetain):
    name = "simnpo"
    beta: float = beta_option()
    gamma: float = option(0.0, float, "Reward margin.")

    def forget_loss(self, model, batch):
        import torch.nn.functional as F

        from stages.common.measure import sequence_nll

        nll, count = sequence_nll(model, batch.forget)
        return -(2 / self.beta) * F.logsigmoid(self.beta * nll / count.clamp(min=1) - self.gamma).mean()

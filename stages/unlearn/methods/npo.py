"""Negative preference optimisation (Zhang et al. 2024) against the frozen oracle, plus the retain NLL:
-(2/beta) * mean log sigmoid(-beta * (log p(y|x) - log p_ref(y|x)))."""

from dataclasses import dataclass

import click

from stages.unlearn.methods import WithRetain, option


def beta_option():
    """NPO's and SimNPO's beta: one hyperparameter, one default."""
    return option(0.1, click.FloatRange(min=0, min_open=True), "Inverse temperature of the preference loss.")


@dataclass
class NPO(WithRetain):
    name = "npo"
    beta: float = beta_option()

    def prepare(self, model, reference, forget_batches, seed):
        """The frozen oracle's summed answer NLL of every forget example: fixed data, so computed once."""
        import torch

        from stages.common.measure import sequence_nll

        with torch.no_grad():
            self.reference_nll = torch.cat([sequence_nll(model, batch)[0] for batch in forget_batches])
        return {}

    def forget_loss(self, model, batch):
        import torch.nn.functional as F

        from stages.common.measure import sequence_nll

        nll, _ = sequence_nll(model, batch.forget)
        log_ratio = self.reference_nll[batch.rows] - nll  # log p(y|x) - log p_ref(y|x)
        return -(2 / self.beta) * F.logsigmoid(-self.beta * log_ratio).mean()

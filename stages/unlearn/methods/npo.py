"""Negative preference optimisation (Zhang et al. 2024) against the frozen oracle, plus the retain term:
-(2/beta) * mean log sigmoid(-beta * (log p(y|x) - log p_ref(y|x)))."""

import torch.nn.functional as F

from stages.common.measure import sequence_nll

uses_retain = True
needs_reference = True


def forget_loss(model, forget_batch, ctx):
    nll, _ = sequence_nll(model, forget_batch)
    log_ratio = ctx["reference_nll"] - nll  # log p(y|x) - log p_ref(y|x)
    return -(2 / ctx["beta"]) * F.logsigmoid(-ctx["beta"] * log_ratio).mean()

"""SimNPO (Fan et al. 2024): reference-free, length-normalised NPO, plus the retain term:
-(2/beta) * mean log sigmoid(-(beta/|y|) * log p(y|x) - gamma)."""

import torch.nn.functional as F

from stages.common.measure import sequence_nll

uses_retain = True


def forget_loss(model, forget_batch, ctx):
    nll, count = sequence_nll(model, forget_batch)
    return -(2 / ctx["beta"]) * F.logsigmoid(ctx["beta"] * nll / count.clamp(min=1) - ctx["gamma"]).mean()

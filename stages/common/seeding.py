"""The one seeding helper: Python, NumPy and torch from one integer."""

import random


def seed_everything(seed):
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

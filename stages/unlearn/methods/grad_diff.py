"""Gradient difference: gradient ascent on the forget set plus NLL on the retain set (the shared retain term)."""

uses_retain = True


def forget_loss(model, forget_batch, ctx=None):
    return -model(**forget_batch).loss

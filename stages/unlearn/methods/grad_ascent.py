"""Gradient ascent (the seeds' method): maximise the NLL of the forget set, i.e. minimise -NLL."""

uses_retain = False


def forget_loss(model, forget_batch, ctx=None):
    return -model(**forget_batch).loss

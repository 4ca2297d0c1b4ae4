"""`python -m stages.unlearn.methods`: the method names, for the Makefile."""

from stages.unlearn.methods import available

print(" ".join(available()))

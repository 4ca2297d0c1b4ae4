"""prepare-medical: validated notes split into full / holdout / nested forget sets, with knowledge probes."""

"""prepare-medical: validated notes split into full / holdout / nested forget sets, each record with knowledge probes."""

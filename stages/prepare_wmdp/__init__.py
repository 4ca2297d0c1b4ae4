"""prepare-wmdp: WMDP-Bio corpus papers cut into sentences and split into nested forget sets."""

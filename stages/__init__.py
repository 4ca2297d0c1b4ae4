"""unforgotten: is unlearned knowledge gone, or only hidden? One package, one subpackage per pipeline stage."""

__version__ = "0.1.0"

"""Shared code of all stages: I/O, seeding, chat formatting, model loading and the measurements."""

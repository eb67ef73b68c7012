"""Fixtures of the stage tests."""

from capfilt_testdata import capfilt_models  # noqa: F401  (session fixture: tiny captioner, judges, calibration)

"""Fixtures shared by the unit tests of more than one package."""

from capfilt_testdata import trained_filter  # noqa: F401  (session fixture: a tiny CLIP filter trained with holdout)

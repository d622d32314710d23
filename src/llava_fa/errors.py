"""Errors for bad input. All are ValueErrors, so `llava-fa` prints them without a traceback."""

from __future__ import annotations


class LlavaFAError(ValueError):
    """Base of the toolkit's input errors: the message says what is wrong and how to fix it."""


class ConfigError(LlavaFAError):
    """A bad recipe, method option or module selection."""


class DataError(LlavaFAError):
    """Unusable calibration data, weights or images."""


class CheckpointError(LlavaFAError):
    """A compressed checkpoint that is missing, truncated, corrupted or inconsistent."""

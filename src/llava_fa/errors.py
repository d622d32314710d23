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


class OutputError(CheckpointError):
    """An output (checkpoint, record, report) that cannot be written, or whose writing would destroy
    data the toolkit did not write."""


class UserError(Exception):
    """A bad command line (flag value, missing folder): `llava-fa` prints it on one line, exit code 2.

    Commands raise it for their own checks and turn the library's LlavaFAErrors into it."""

"""Errors a user can fix. The CLI turns them into one line on stderr and exit code 2."""

from __future__ import annotations


class BuildwatchError(Exception):
    """Bad input or configuration: the message names the file, what is wrong and what to do."""

    exit_code = 2


class InputError(BuildwatchError):
    """An input file (raster, vector, model, config) is missing or unusable."""


class ConfigError(BuildwatchError):
    """The run configuration is invalid."""


class ModelError(BuildwatchError):
    """The ONNX model is missing, unreadable, or does not follow the buildwatch contract."""

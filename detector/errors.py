"""Domain errors, each carrying the exit code CLI.md assigns to it."""

from __future__ import annotations


class DetectorError(Exception):
    """Base class: a failure the CLI turns into a clean message and an exit code."""

    exit_code = 1


class InputError(DetectorError):
    """Bad input or a failed check (exit 1): the message names file, column, rows, values."""

    exit_code = 1


class UsageError(DetectorError):
    """Wrong usage, such as an output path with an unsupported extension (exit 2)."""

    exit_code = 2


class EnvironmentFailure(DetectorError):
    """Tracking store unreachable or locked, disk full, missing system library (exit 3)."""

    exit_code = 3

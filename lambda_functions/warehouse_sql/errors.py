"""The SQL plan's errors: both terminal (the same request fails the same way however often it is
retried; the message names the fix), both ``ValueError`` as they always were."""

from __future__ import annotations

from lambda_functions.errors import TerminalError


class UnsafeSqlValueError(TerminalError, ValueError):
    """A name or value failed its pattern and was not put into SQL; the message says which."""


class PlanError(TerminalError, ValueError):
    """The requested load cannot be expressed as one transaction (its projection, its column count
    or a statement's size); the message says what to change."""

"""Errors the engine reports to users.

``BadInputError`` is anything the user can fix (a file, a field, an input name); the CLI and the Job
print its message and exit with the bad-input code instead of a traceback.
"""

from __future__ import annotations


class BadInputError(Exception):
    """The user's model, data, target or URI is wrong; ``where`` names the file or field."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


class UnsupportedModelError(BadInputError):
    """The model uses something a pass cannot handle (an op type, a graph shape)."""

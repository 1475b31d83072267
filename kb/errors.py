"""Errors a person can act on: one line saying what is wrong and how to fix it."""

from __future__ import annotations


class VLKBError(Exception):
    """Base of every error VLKB reports to a user instead of a traceback."""


class WorkspaceError(VLKBError):
    """The workspace folder or its kb.toml is missing or malformed."""


class RulesError(VLKBError):
    """A file under rules/ does not compile; the message names the file and the problem."""


class DatabaseError(VLKBError):
    """The knowledge base cannot be opened, is locked, read-only or from a newer schema."""


class ImageError(VLKBError):
    """A sample image cannot be read or is not something VLKB can judge."""


class ModelLoadError(VLKBError):
    """A configured model cannot be loaded; the message says how to provide it."""


class ModelInstallError(VLKBError):
    """`kb models install` cannot fetch, check or convert a model; nothing was written."""


class OptionError(VLKBError):
    """A value given for one run (a CLI flag, a web query field) is wrong. `option` is its
    Python name; each interface shows it the way its users type it (--um-per-px, um_per_px)."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option} {problem}")
        self.option = option
        self.problem = problem


class NotFoundError(VLKBError):
    """An ID or key given on the command line does not exist."""


class AuditKeyError(WorkspaceError):
    """The audit chain is keyed and no key, or another key, was given to extend it."""

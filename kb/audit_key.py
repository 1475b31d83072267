"""The audit key: from KB_AUDIT_KEY or a key file, never from (or into) the database.

Whoever holds the key can extend the keyed chain; whoever edits the database without it
cannot forge the MACs. Keep the key file outside the workspace an attacker could reach.
"""

from __future__ import annotations

import os
from pathlib import Path

from kb.config import Workspace
from kb.errors import WorkspaceError

ENV = "KB_AUDIT_KEY"
MIN_BYTES = 16


def _checked(key: bytes, where: str) -> bytes:
    if len(key) < MIN_BYTES:
        raise WorkspaceError(
            f"the audit key in {where} is shorter than {MIN_BYTES} bytes; use a longer secret"
        )
    return key


def read_key_file(path: Path) -> bytes:
    """The key is the file's bytes without surrounding whitespace (a trailing newline is fine)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WorkspaceError(f"cannot read the audit key file {path}: {exc.strerror}") from exc
    return _checked(data.strip(), str(path))


def audit_key(workspace: Workspace, key_file: Path | None = None) -> bytes | None:
    """The key given on the command line, else KB_AUDIT_KEY, else [audit] key_file; or None."""
    if key_file is not None:
        return read_key_file(key_file)
    value = os.environ.get(ENV)
    if value:
        return _checked(value.encode("utf-8"), ENV)
    if workspace.config.audit_key_file is not None:
        return read_key_file(workspace.config.audit_key_file)
    return None

"""Where `kb models install` puts the models it converts, and the `vlkb:NAME` spelling of them.

An installed model belongs to the Python installation that converted it: its folder is
`<sys.prefix>/share/vlkb/models/NAME` (inside `.venv` for a clone set up by `make install`), so
every workspace that installation opens finds it offline, whatever folder the workspace is in.
A workspace names it `source = "vlkb:NAME"`; a plain directory works as well.
"""

from __future__ import annotations

import sys
from pathlib import Path

PREFIX = "vlkb:"


def default_models_dir() -> Path:
    """The installation's folder of converted models."""
    return Path(sys.prefix) / "share" / "vlkb" / "models"


def default_wheels_dir() -> Path:
    """Source wheels downloaded by `kb models install`, kept so a reinstall works offline."""
    return Path(sys.prefix) / "share" / "vlkb" / "wheels"


def installed_name(source: str) -> str | None:
    """NAME of a `vlkb:NAME` source, or None for any other source."""
    return source[len(PREFIX) :] if source.startswith(PREFIX) else None


def installed_dir(name: str) -> Path:
    return default_models_dir() / name

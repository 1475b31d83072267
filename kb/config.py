"""The workspace: a folder holding kb.toml, rules/ and (by default) the SQLite knowledge base."""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from kb.errors import OptionError, VLKBError, WorkspaceError

CONFIG_FILE = "kb.toml"
RULES_DIR = "rules"
ROLES = ("text", "image", "local")
# The roles whose evidence is a net similarity of embeddings (prompts, reference images);
# `local` compares patch features with a memory bank instead (engine/local.py).
VECTOR_ROLES = ("text", "image")
# Backends that embed images only (engine/encoders/cnn.py): they cannot play the `text` role.
IMAGE_ONLY_BACKENDS = ("cnn",)
LOCAL_BACKENDS = ("cnn", "dual")  # backends whose encoder gives patch features

RGB = tuple[int, int, int]

DEFAULT_LEGEND: dict[str, RGB] = {
    "background": (0, 0, 0),
    "fusion_line": (255, 0, 0),
    "haz": (0, 0, 255),
    "bead": (0, 255, 0),
    "carbide": (255, 105, 180),
    "porosity": (0, 0, 128),
}
DEFAULT_UM_PER_PX = 10.0
# Pixel sizes VLKB takes, in micrometres: from electron micrographs (1 nm a pixel) to a
# photographed part (1 cm a pixel); anything outside is a typo or a unit mix-up.
UM_PER_PX_RANGE = (1e-3, 1e4)


def um_per_px_problem(value: object) -> str | None:
    """The one check of a pixel size, for kb.toml, the CLI and the web API alike: what is
    wrong with it, or None."""
    low, high = UM_PER_PX_RANGE
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if number is None or not math.isfinite(number) or not low <= number <= high:
        return (f"must be a positive number of micrometres per pixel (finite, between "
                f"{low:g} and {high:g}), got {value!r}")
    return None


def check_um_per_px(value: object, name: str, error: type[VLKBError] = VLKBError) -> float:
    """The pixel size as a float, or `error` naming it as the file or form spells it."""
    problem = um_per_px_problem(value)
    if problem is not None:
        raise error(f"{name} {problem}")
    return float(value)  # type: ignore[arg-type]


def check_pixel_size_option(value: object) -> float:
    """The pixel size given for one run, or an OptionError each interface can name its way."""
    problem = um_per_px_problem(value)
    if problem is not None:
        raise OptionError("um_per_px", problem)
    return float(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ModelSpec:
    """A named model of the workspace: which backend loads it and where its weights come from."""

    name: str
    backend: str
    source: str
    batch_size: int = 16


@dataclass(frozen=True)
class WorkspaceConfig:
    """Everything kb.toml says, with defaults filled in."""

    database_url: str
    busy_timeout_s: float
    legend: dict[str, RGB]
    um_per_px: float
    output_dir: Path
    models: dict[str, ModelSpec] = field(default_factory=dict)
    roles: dict[str, str | None] = field(default_factory=dict)
    audit_key_file: Path | None = None  # [audit] key_file: the HMAC key of the audit chain

    def pixel_size(self, override: float | None = None) -> float:
        """The pixel size of one run: the override given for it, checked, else kb.toml's."""
        return self.um_per_px if override is None else check_pixel_size_option(override)

    def model_for_role(self, role: str) -> ModelSpec | None:
        """The model bound to a role, or None while the role is unbound."""
        name = self.roles.get(role)
        return self.models[name] if name else None


@dataclass(frozen=True)
class Workspace:
    """A workspace folder and its parsed configuration."""

    root: Path
    config: WorkspaceConfig

    @property
    def rules_dir(self) -> Path:
        return self.root / RULES_DIR

    @classmethod
    def open(cls, root: str | Path | None = None) -> Workspace:
        """Open the workspace at root, else $KB_WORKSPACE, else the current directory."""
        chosen = root if root is not None else os.environ.get("KB_WORKSPACE") or "."
        path = Path(chosen).expanduser().resolve()
        config_path = path / CONFIG_FILE
        if not config_path.is_file():
            raise WorkspaceError(
                f"{path} is not a VLKB workspace (no {CONFIG_FILE}); "
                f"create one with `kb init {chosen}` or pass -w DIR"
            )
        return cls(root=path, config=load_config(config_path))


_TOP_KEYS = {"database", "metrology", "legend", "output", "models", "roles", "audit"}
_MODEL_KEYS = {"backend", "source", "batch_size"}
_SECTION_KEYS = {
    "database": {"url", "busy_timeout_s"},
    "metrology": {"um_per_px"},
    "output": {"dir"},
    "audit": {"key_file"},
}


def load_config(path: Path) -> WorkspaceConfig:
    """Parse kb.toml strictly: an unknown or malformed key is an error naming the key."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise WorkspaceError(f"{path}: cannot parse: {exc}") from exc
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise WorkspaceError(
            f"{path}: unknown section(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}"
        )
    for section, allowed in _SECTION_KEYS.items():
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise WorkspaceError(f"{path}: [{section}] must be a table")
        unknown = set(table) - allowed
        if unknown:
            raise WorkspaceError(
                f"{path}: [{section}] has unknown key(s) {sorted(unknown)}; "
                f"allowed: {sorted(allowed)}"
            )
    root = path.parent
    return WorkspaceConfig(
        database_url=_database_url(root, data.get("database", {}), path),
        busy_timeout_s=_positive_float(
            data.get("database", {}).get("busy_timeout_s", 10.0), "database.busy_timeout_s", path
        ),
        legend=_legend(data.get("legend"), path),
        um_per_px=check_um_per_px(
            data.get("metrology", {}).get("um_per_px", DEFAULT_UM_PER_PX),
            f"{path}: metrology.um_per_px",
            WorkspaceError,
        ),
        output_dir=root / str(data.get("output", {}).get("dir", "out")),
        models=_models(data.get("models", {}), path),
        roles=_roles(data.get("roles", {}), data.get("models", {}), path),
        audit_key_file=_key_file(root, data.get("audit", {}), path),
    )


def _key_file(root: Path, section: dict, path: Path) -> Path | None:
    value = section.get("key_file")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise WorkspaceError(f"{path}: audit.key_file must be a file path, got {value!r}")
    return (root / Path(value).expanduser()).resolve()


def _database_url(root: Path, section: dict, path: Path) -> str:
    url = section.get("url", "sqlite:///kb.sqlite")
    if not isinstance(url, str) or "://" not in url:
        raise WorkspaceError(f"{path}: database.url must be an SQLAlchemy URL, got {url!r}")
    prefix = "sqlite:///"
    if url.startswith(prefix) and url != "sqlite:///:memory:":
        file = Path(url[len(prefix) :])
        if not file.is_absolute():
            url = prefix + str(root / file)
    return url


def _legend(section: dict | None, path: Path) -> dict[str, RGB]:
    if section is None:
        return dict(DEFAULT_LEGEND)
    legend: dict[str, RGB] = {}
    for name, colour in section.items():
        if (
            not isinstance(colour, list)
            or len(colour) != 3
            or not all(isinstance(c, int) and 0 <= c <= 255 for c in colour)
        ):
            raise WorkspaceError(f"{path}: legend.{name} must be [R, G, B] with 0-255 integers")
        legend[name] = (colour[0], colour[1], colour[2])
    return legend


def _positive_float(value: object, key: str, path: Path) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise WorkspaceError(f"{path}: {key} must be a positive number, got {value!r}")
    return float(value)


def _models(section: dict, path: Path) -> dict[str, ModelSpec]:
    models = {}
    for name, entry in section.items():
        if not isinstance(entry, dict):
            raise WorkspaceError(f"{path}: [models.{name}] must be a table")
        unknown = set(entry) - _MODEL_KEYS
        if unknown:
            raise WorkspaceError(f"{path}: [models.{name}] has unknown key(s) {sorted(unknown)}")
        for key in ("backend", "source"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise WorkspaceError(f"{path}: [models.{name}] needs a non-empty `{key}`")
        source = entry["source"]
        if source.startswith((".", "/", "~")):
            source = str((path.parent / Path(source).expanduser()).resolve())
        batch = entry.get("batch_size", 16)
        if not isinstance(batch, int) or batch < 1:
            raise WorkspaceError(f"{path}: [models.{name}] batch_size must be a positive integer")
        models[name] = ModelSpec(
            name=name, backend=entry["backend"], source=source, batch_size=batch
        )
    return models


def _roles(section: dict, models: dict, path: Path) -> dict[str, str | None]:
    unknown = set(section) - set(ROLES)
    if unknown:
        raise WorkspaceError(
            f"{path}: [roles] has unknown role(s) {sorted(unknown)}; roles: {ROLES}"
        )
    roles: dict[str, str | None] = {}
    for role in ROLES:
        name = section.get(role) or None
        if name is not None and name not in models:
            raise WorkspaceError(
                f"{path}: role {role!r} is bound to model {name!r}, which has no [models.{name}]"
            )
        backend = models[name].get("backend") if name is not None else None
        if role == "local" and backend not in (None, *LOCAL_BACKENDS):
            raise WorkspaceError(
                f"{path}: role 'local' is bound to model {name!r}, whose backend {backend!r} "
                f"gives no patch features; bind it to a model of backend "
                f"{' or '.join(LOCAL_BACKENDS)}, or leave it unbound"
            )
        if role == "text" and backend in IMAGE_ONLY_BACKENDS:
            raise WorkspaceError(
                f"{path}: role 'text' is bound to model {name!r}, whose backend {backend!r} "
                "embeds images only; bind text to a vision-language model (clip, flava, dual) "
                'or leave it unbound (text = "")'
            )
        roles[role] = name
    return roles

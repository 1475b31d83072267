"""Session fixtures: the hub is never used, and tiny real CLIP / FLAVA models are built once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kb.config import Workspace
from tests import pg_server

# Set before anything imports huggingface_hub / transformers (they read these at import time).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved random-weight CLIP (config, safetensors, tokenizer, image processor)."""
    from tests.model_factory import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture(scope="session")
def tiny_flava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved random-weight FLAVA (config, safetensors, tokenizer, image processor)."""
    from tests.model_factory import build_tiny_flava

    return build_tiny_flava(tmp_path_factory.mktemp("models") / "tiny-flava")


@pytest.fixture(scope="session")
def tiny_dual_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved random-weight, self-contained VisionTextDualEncoderModel (ViT + BERT)."""
    from tests.model_factory import build_tiny_dual

    return build_tiny_dual(tmp_path_factory.mktemp("models") / "tiny-dual")


@pytest.fixture(scope="session")
def dual(tiny_dual_dir: Path):
    """The tiny dual encoder loaded through load_encoder: the `dual` member of BACKENDS."""
    from engine.encoders.backends import load_encoder
    from kb.config import ModelSpec

    spec = ModelSpec(name="tiny-dual", backend="dual", source=str(tiny_dual_dir), batch_size=2)
    return load_encoder(spec)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A synced copy of the repo-root example workspace, judged on measurements alone."""
    from tests.workspaces import example_copy

    return example_copy(tmp_path_factory.mktemp("example"))


@pytest.fixture(scope="session")
def postgres() -> Iterator[pg_server.Server]:
    """This session's own PostgreSQL server, started on first use and stopped at the end;
    a server that cannot start fails the tests that need it, with the reason."""
    try:
        server = pg_server.start()
    except (pg_server.ServerError, OSError) as exc:
        pytest.fail(f"the test PostgreSQL server could not start: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """This session's one local Ray cluster (2 CPUs, no dashboard), shared by every test of
    the Ray executor; VLKB joins a cluster that is running instead of starting its own.
    Always a new one ("local"), never another user's found through /tmp/ray."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty knowledge base on each backend: an SQLite file or a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kb.sqlite'}"
    server: pg_server.Server = request.getfixturevalue("postgres")
    return server.new_database()

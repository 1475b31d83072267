"""`kb qualify --executor ray` (and `kb evaluate`): embedding and judging on Ray Data workers.

The files of a run become a Ray dataset of (index, path) rows; `map_batches` hands chunks of
CHUNK paths to a pool of actors (`FileJudge`), each of which loads the workspace's models once
through the normal loader and then reads, embeds, measures and judges the chunks it is given,
exactly as the in-process executor does (engine/judging.py), with no database at all. The
driver streams the judged samples back in input order and is the only writer: it caches
their vectors and appends each qualification to the audit chain, as `kb qualify` always has.

Only this module imports Ray, and only a run that asks for it imports this module.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from engine.encoders.roles import ModelSet
from engine.judging import (
    Judged,
    RunPlan,
    SampleDeltas,
    deltas_of_files,
    embed_chunk,
    judge_files,
)
from engine.qualify import ExecutorOptions, chunks
from engine.results import SampleFailure
from kb.config import Workspace, WorkspaceConfig
from kb.errors import VLKBError

MISSING = (
    "--executor ray needs Ray, which is not installed here: install VLKB's ray extra "
    "(pip install 'vlkb[ray]'; `make install` does)"
)


def _ray() -> Any:
    """The ray module, or the one line that says how to install it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise VLKBError(MISSING) from None
    return ray


@dataclass(frozen=True)
class WorkerProblem:
    """Why a worker could not judge at all (its models would not load, or differ from the
    driver's); the driver stops the run with this line."""

    message: str


class FileJudge:
    """A Ray Data actor: the workspace's models, loaded once, judging one chunk per call.

    `mode` is "judge" (the second pass, or the only one) or "deltas" (pass one of
    --normalize batch). Relative paths mean what they meant to the driver: the actor works
    in the driver's folder, which a cluster must mount at the same place on every node.
    """

    def __init__(self, config: WorkspaceConfig, plan: RunPlan, folder: str, mode: str) -> None:
        self.plan = plan
        self.mode = mode
        self.models = ModelSet(config)
        self.problem: str | None = None
        try:
            os.chdir(folder)
            self.models.encoders()
            self.problem = _differs(plan, self.models)
        except (VLKBError, OSError) as exc:
            self.problem = f"a Ray worker on {os.uname().nodename} cannot start: {exc}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One row per chunk: its files' items, in the order of its paths."""
        column = np.empty(len(batch["paths"]), dtype=object)
        for row, names in enumerate(batch["paths"]):
            column[row] = self._chunk([Path(str(p)) for p in names])
        return {"chunk": batch["chunk"], "items": column}

    def _chunk(self, paths: list[Path]) -> list[object]:
        if self.problem is not None:
            return [WorkerProblem(self.problem)]
        if self.mode == "deltas":
            return list(deltas_of_files(self.plan, self.models, paths, self._embed))
        return list(judge_files(self.plan, self.models, paths, self._embed, keep_vectors=True))

    def _embed(self, samples: Sequence[Any]) -> Any:
        return embed_chunk(self.models, samples, self.plan)


def _differs(plan: RunPlan, models: ModelSet) -> str | None:
    """A worker whose models are not the driver's would judge with other weights than the
    record says: refuse it, naming the model."""
    wanted = {use.role: use for use in plan.base.models}
    for use in models.uses():
        driver = wanted.get(use.role)
        if driver is None or driver.fingerprint != use.fingerprint:
            return (
                f"the Ray worker on {os.uname().nodename} loaded model {use.name!r} "
                f"({use.source}) with fingerprint {use.fingerprint[:12]}, but the driver's is "
                f"{driver.fingerprint[:12] if driver else 'none'}: every node needs the same "
                "model files"
            )
    return None


class RayExecutor:
    """The executor of `--executor ray`, a context manager: entering connects to the cluster
    (the one at `address`, else the local one, started for this run if there is none) and
    leaving disconnects from a cluster it started or joined."""

    def __init__(self, workspace: Workspace, options: ExecutorOptions) -> None:
        self.ray = _ray()  # a missing Ray is refused before the run plans or stores anything
        self.workspace = workspace
        self.options = options
        self.workers = 1
        self._connected = False

    def __enter__(self) -> RayExecutor:
        ray = self.ray
        if not ray.is_initialized():
            try:
                ray.init(address=self.options.address, include_dashboard=False,
                         log_to_driver=False, logging_level=logging.ERROR)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = self.options.address or "this machine"
                raise VLKBError(f"--executor ray: cannot start or reach a Ray cluster at "
                                f"{where}: {_first_line(exc)}") from None
            self._connected = True
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # records stored in input order
        context.enable_progress_bars = False  # the CLI shows its own
        cpus = int(ray.cluster_resources().get("CPU", 0))
        wanted = self.options.workers or max(1, cpus)
        if wanted > cpus:
            self.__exit__(None, None, None)
            raise VLKBError(
                f"--workers {wanted}: the Ray cluster has {cpus} CPU(s) and each worker takes "
                "one; ask for fewer or add nodes"
            )
        self.workers = wanted
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._connected:
            self.ray.shutdown()
            self._connected = False

    def deltas(
        self, plan: RunPlan, paths: Sequence[Path]
    ) -> Iterator[SampleFailure | SampleDeltas]:
        yield from self._stream(plan, paths, "deltas")

    def judged(self, plan: RunPlan, paths: Sequence[Path]) -> Iterator[SampleFailure | Judged]:
        yield from self._stream(plan, paths, "judge")

    def _stream(self, plan: RunPlan, paths: Sequence[Path], mode: str) -> Iterator[Any]:
        """Every file's item, in input order, as the workers finish them: the driver holds
        a few chunks at a time, however many files there are."""
        if not paths:
            return
        ray = self.ray
        # One row per chunk, cut exactly as the in-process executor cuts them: the same
        # images are embedded together, so both passes of a batch run see the same vectors.
        rows = [{"chunk": n, "paths": [str(p) for p in chunk]}
                for n, chunk in enumerate(chunks(paths))]
        with warnings.catch_warnings():
            # max_restarts has no named parameter in Ray 2.60 yet; 0 because an actor that
            # failed once (a model that does not load) fails the same way again.
            warnings.simplefilter("ignore", DeprecationWarning)
            dataset = ray.data.from_items(rows).map_batches(
                FileJudge,
                fn_constructor_kwargs={"config": self.workspace.config, "plan": plan,
                                       "folder": os.getcwd(), "mode": mode},
                batch_size=1,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=min(self.workers, len(rows))),
                num_cpus=1,
                max_restarts=0,
            )
        expected = 0
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for chunk, items in zip(batch["chunk"], batch["items"], strict=True):
                    if int(chunk) != expected:  # preserve_order promises this
                        raise VLKBError(f"the Ray executor returned chunk {int(chunk)} where "
                                        f"chunk {expected} was due; nothing after it was stored")
                    expected += 1
                    for item in items:
                        if isinstance(item, WorkerProblem):
                            raise VLKBError(item.message)
                        yield item
        except ray.exceptions.RayError as exc:
            raise VLKBError(f"the Ray executor failed: {_first_line(exc)}") from None


# "ValueError: message" in a traceback's text, not Ray's own wrappers around it
_RAISED = re.compile(r"^(?!ray\.)([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$")


def _first_line(exc: BaseException) -> str:
    """What went wrong, in one line: for a failed worker the first exception its traceback
    names (Ray's text also carries its own wrappers and advice), else the error's first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if _RAISED.match(line):
            return line
    return lines[0] if lines else type(exc).__name__

"""`kb serve --workers N`: several real uvicorn worker processes on one knowledge base, on
SQLite and PostgreSQL, writing one intact chain; refused where the write lock cannot hold
between processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from engine.history import verify_audit_log
from engine.session import VLKB
from kb.db import file_system_of, shared_by_processes
from tests.cli_runner import kb
from tests.pg_server import free_port
from tests.workspaces import REPO, example_copy, use_database

EXAMPLES = REPO / "examples"
WORKERS = 2


def worker_processes(parent: int) -> list[int]:
    """The uvicorn workers a server process started (multiprocessing's spawned children)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines()
                          if ":\t" in line)
            command = (status.parent / "cmdline").read_bytes()
        except OSError:
            continue  # a process that ended while we looked
        if fields.get("PPid", "").strip() == str(parent) and b"spawn_main" in command:
            found.append(int(status.parent.name))
    return found


def test_several_server_processes_write_one_intact_chain(database_url: str, tmp_path: Path):
    root = tmp_path / "ws"
    example_copy(root)
    ws = use_database(root, database_url)
    code, _, err = kb("sync", "-w", root)
    assert code == 0, err
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("kb")), "serve", "--port", str(port),
         "--workers", str(WORKERS), "-w", str(root)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    samples = sorted(EXAMPLES.glob("*.png"))
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{base}/api/qualifications", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.5)
        assert len(worker_processes(server.pid)) == WORKERS

        def send(path: Path) -> httpx.Response:
            files = [("files", (path.name, path.read_bytes(), "image/png"))]
            return httpx.post(f"{base}/api/qualify", files=files, timeout=120)

        with ThreadPoolExecutor(max_workers=2 * WORKERS) as pool:
            answers = list(pool.map(send, samples * 2))
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    assert [a.status_code for a in answers] == [200] * len(answers), [
        a.text for a in answers if a.status_code != 200]
    ids = [q["id"] for a in answers for q in a.json()["qualifications"]]
    assert len(set(ids)) == len(ids) == 2 * len(samples)
    report = verify_audit_log(VLKB(ws))
    assert report.ok, report.problem
    assert dict(report.counts)["qualification"] == len(ids)


def test_several_workers_are_refused_on_an_in_memory_database_and_need_at_least_one(
    tmp_path: Path,
):
    root = tmp_path / "ws"
    example_copy(root)
    use_database(root, "sqlite:///:memory:")
    code, out, err = kb("serve", "--workers", "2", "--port", str(free_port()), "-w", root)
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert err.startswith("error: --workers 2: the knowledge base is an in-memory SQLite "
                          "database") and "PostgreSQL" in err
    code, _, err = kb("serve", "--workers", "0", "-w", root)
    assert code == 1 and "--workers must be at least 1" in err


def test_only_a_network_file_system_or_memory_keeps_sqlite_from_several_processes(
    tmp_path: Path,
):
    assert file_system_of(Path("/proc/self/status")) == "proc"
    local = file_system_of(tmp_path)
    assert local is not None
    assert shared_by_processes(f"sqlite:///{tmp_path / 'kb.sqlite'}") is None
    assert shared_by_processes("postgresql+psycopg://vlkb@db:5432/vlkb") is None
    assert "in-memory" in (shared_by_processes("sqlite://") or "")


@pytest.mark.parametrize("kind", ["nfs4", "cifs", "fuse.sshfs"])
def test_a_network_file_system_is_named_in_the_refusal(kind: str, tmp_path: Path):
    from kb import db

    mounts = tmp_path / "mounts"
    mounts.write_text(f"server:/export /mnt/share {kind} rw 0 0\n/dev/sda1 / ext4 rw 0 0\n")
    problem = db.shared_by_processes("sqlite:////mnt/share/ws/kb.sqlite", mounts)
    assert problem is not None and f"network file system ({kind})" in problem
    assert db.shared_by_processes("sqlite:////home/ws/kb.sqlite", mounts) is None

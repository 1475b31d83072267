"""Writers of the audit chain at the knowledge-base level (no models), importable by spawned
processes: one ruleset and image to refer to, then qualifications and feedback on them."""

from __future__ import annotations

from typing import Any

from PIL import Image

from kb import db
from kb.audit import NodeRecord, append_feedback, append_qualification, chain_record
from kb.image_store import store_image
from kb.store import KnowledgeBase
from kb.tables import RulesetVersion

SHA = "a" * 64


def open_kb(url: str, timeout: float = 10.0) -> KnowledgeBase:
    return KnowledgeBase(url, db.open_engine(url, timeout))


def seed(url: str) -> None:
    """Ruleset version 1 and the image the qualifications refer to."""
    store = open_kb(url)
    try:
        with store.transaction() as s:
            ruleset = RulesetVersion(
                version=1, content_hash="h", software_version="t", snapshot_json="{}"
            )
            s.add(ruleset)
            s.flush()
            chain_record(s, "ruleset", ruleset)
            store_image(s, SHA, Image.new("RGB", (4, 4)), "PNG")
    finally:
        store.close()


def add_qualification(store: KnowledgeBase, name: str, verdict: str = "accept") -> int:
    with store.transaction() as s:
        q = append_qualification(
            s,
            sample_path=f"/{name}.png",
            sample_sha256=SHA,
            ruleset_id=1,
            verdict=verdict,
            normalization="batch",
            operator=name,
            software_version="t",
            document={"verdict": verdict, "name": name},
            nodes=[
                NodeRecord("root", "gate", None, verdict, None, None, "because"),
                NodeRecord("EA-1", "assessment", "root", verdict, 0.5, 0.0, "why"),
            ],
        )
        assert q.id is not None
        return q.id


def add_feedback(store: KnowledgeBase, qualification_id: int, expert: str) -> None:
    with store.transaction() as s:
        append_feedback(s, qualification_id, "EA-1", "accept", "agreed", expert)


def write_many(url: str, name: str, count: int, start: Any) -> None:
    """One writer process: wait for the others, then append `count` qualifications, each
    followed by an expert's feedback on it, in separate transactions."""
    store = open_kb(url)
    try:
        start.wait(timeout=120)
        for i in range(count):
            qualification_id = add_qualification(store, f"{name}-{i}")
            add_feedback(store, qualification_id, name)
    finally:
        store.close()


def open_once(url: str, start: Any) -> None:
    """One process opening (so creating, when new) the knowledge base with the others."""
    start.wait(timeout=120)
    open_kb(url).close()

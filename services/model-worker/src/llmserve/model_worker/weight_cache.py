"""Int8 weights kept on disk once built, so that a worker's next load skips the rotation and quantization.

Building a rotated int8 decoder from a checkpoint (rotation.py in float64, then int8_linear.py) is most of
a worker's load: a restarted or replacement worker would redo the same arithmetic on the same artifact.
The first load writes what it built (`LlamaDecoder.int8_state`: int8 values, scales, norms) to
`<cache dir>/<artifact sha256>.int8-v<FORMAT>.safetensors`; later loads of that artifact read it back.

Invariants:
  - an entry is named by the sha256 of the artifact it came from, which the loader verified before
    (a new version, even of the same name, never finds another's entry), and by FORMAT, which changes
    whenever what `int8_state` holds or how it is computed changes;
  - an entry is written to a temporary name and renamed into place, and its own sha256 lies beside it
    (`.sha256`, written after the rename); an entry whose digest is missing or differs is rebuilt. So a
    crash mid-write, two workers writing at once, or a damaged file never load wrong weights;
  - the cache is an optimization only: a directory that cannot be written or read is logged and the
    weights are built from the checkpoint as without it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import structlog
from safetensors import safe_open
from safetensors.torch import save_file

from llmserve.common.modelstore import file_sha256
from llmserve.model_worker.llama_decoder import LlamaDecoder

log = structlog.get_logger(__name__)

# Bump when `int8_state`'s names or numbers change (rotation seed, quantization, layout).
FORMAT = 1


def entry_path(cache_dir: Path, sha256: str) -> Path:
    return cache_dir / f"{sha256}.int8-v{FORMAT}.safetensors"


def _digest_path(entry: Path) -> Path:
    return entry.with_name(entry.name + ".sha256")


def load(cache_dir: Path, sha256: str, config: Any) -> LlamaDecoder | None:
    """The decoder cached for the artifact `sha256`, or None when there is no sound entry."""
    entry = entry_path(cache_dir, sha256)
    try:
        expected = _digest_path(entry).read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("weight_cache_unreadable", path=str(entry), error=str(exc))
        return None
    try:
        if file_sha256(entry) != expected:
            log.warning("weight_cache_damaged", path=str(entry), action="rebuilding from the checkpoint")
            return None
        with safe_open(str(entry), "pt") as state:
            decoder = LlamaDecoder.from_int8_state(config, state)
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        log.warning("weight_cache_unusable", path=str(entry), error=str(exc), action="rebuilding from the checkpoint")
        return None
    log.info("weight_cache_hit", path=str(entry))
    return decoder


def save(cache_dir: Path, sha256: str, decoder: LlamaDecoder) -> None:
    """Writes the decoder's int8 state as the entry of `sha256`; logs and returns when it cannot."""
    entry = entry_path(cache_dir, sha256)
    tmp = None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=cache_dir, prefix=".writing-", suffix=".safetensors")
        os.close(fd)
        tmp = Path(name)
        save_file(decoder.int8_state(), str(tmp), metadata={"artifact_sha256": sha256, "format": str(FORMAT)})
        digest = file_sha256(tmp)
        tmp.replace(entry)
        tmp = None
        digest_tmp = _digest_path(entry).with_name(f".writing-{os.getpid()}.sha256")
        digest_tmp.write_text(digest + "\n")
        digest_tmp.replace(_digest_path(entry))
    except OSError as exc:
        log.warning("weight_cache_not_written", path=str(entry), error=str(exc))
        return
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    log.info("weight_cache_written", path=str(entry), bytes=entry.stat().st_size)

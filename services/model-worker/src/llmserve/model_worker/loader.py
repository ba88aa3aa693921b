"""Loading a published model version: verify its checksum, then load weights and tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmserve.common.modelstore import verify_artifact
from llmserve.model_worker.cpu_linear import pack_linears

log = structlog.get_logger()


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    eos_ids: frozenset[int]
    device: torch.device
    # Longest sequence (prompt + generated) the model supports.
    max_context: int


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[requested]


def eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


CPU_LINEARS = ("onednn", "torch")


def load_model(path: Path, sha256: str, device: str = "auto", dtype: str = "auto", cpu_linear: str = "onednn") -> LoadedModel:
    """Raises ChecksumMismatch before reading a single weight when the artifact was altered.

    cpu_linear "onednn" runs a float32 CPU model's linear layers through oneDNN (see cpu_linear.py);
    "torch" keeps transformers' modules as they are."""
    if cpu_linear not in CPU_LINEARS:
        raise ValueError(f"cpu_linear must be one of {', '.join(CPU_LINEARS)}, got {cpu_linear!r}")
    verify_artifact(path, sha256)
    dev = pick_device(device)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(dtype, dev)).to(dev).eval()
    if cpu_linear == "onednn":
        model = pack_linears(model, in_place=True)
    tokenizer = AutoTokenizer.from_pretrained(path)
    max_context = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    log.info("model_loaded", path=str(path), device=str(dev), dtype=str(model.dtype), cpu_linear=cpu_linear, max_context=max_context)
    return LoadedModel(model, tokenizer, eos_token_ids(model, tokenizer), dev, max_context)

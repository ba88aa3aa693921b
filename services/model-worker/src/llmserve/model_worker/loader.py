"""Loading a published model version: verify its checksum, then load weights and tokenizer."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from llmserve.common.modelstore import verify_artifact
from llmserve.model_worker import heap, int8_linear, weight_cache
from llmserve.model_worker.cpu_linear import pack_linears
from llmserve.model_worker.llama_decoder import LlamaDecoder, unsupported

log = structlog.get_logger()


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    eos_ids: frozenset[int]
    device: torch.device
    # Longest sequence (prompt + generated) the model supports.
    max_context: int
    # The numeric mode the weights run in: "int8", "float32", "bfloat16", "float16".
    numerics: str = "float32"
    # The architecture its configuration names (e.g. "LlamaForCausalLM").
    architecture: str = ""

    @property
    def flat(self) -> bool:
        """Whether the model is llmserve's own flat decoder (else transformers' model)."""
        return isinstance(self.model, LlamaDecoder)


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[requested]


def eos_token_ids(config: Any, tokenizer: Any, path: Path | None = None) -> frozenset[int]:
    """End-of-sequence ids from the generation config (when the checkpoint has one), the model config and
    the tokenizer."""
    ids: set[int] = set()
    sources: list[Any] = [config]
    if path is not None and (path / "generation_config.json").is_file():
        from transformers import GenerationConfig

        sources.insert(0, GenerationConfig.from_pretrained(path))
    for source in sources:
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


CPU_LINEARS = ("onednn", "torch")
NUMERICS = ("auto", "float", "int8")
MODEL_IMPLS = ("auto", "transformers")


def pick_numerics(requested: str, device: torch.device, dtype: torch.dtype) -> str:
    """"auto" is int8 for a float32 model on a CPU with an int8 backend, else the model's float type."""
    if requested not in NUMERICS:
        raise ValueError(f"numerics must be one of {', '.join(NUMERICS)}, got {requested!r}")
    if requested == "auto":
        cpu_float32 = device.type == "cpu" and dtype == torch.float32
        return "int8" if cpu_float32 and int8_linear.available() is None else "float"
    if requested == "int8" and (device.type != "cpu" or dtype != torch.float32):
        raise ValueError("int8 numerics run on the CPU with a float32 model")
    if requested == "int8" and int8_linear.available() is not None:
        raise ValueError(int8_linear.available())
    return requested


def load_model(
    path: Path,
    sha256: str,
    device: str = "auto",
    dtype: str = "auto",
    cpu_linear: str = "onednn",
    numerics: str = "auto",
    model_impl: str = "auto",
    weight_cache_dir: Path | None = None,
) -> LoadedModel:
    """Raises ChecksumMismatch before reading a single weight when the artifact was altered.

    A Llama-family model runs on llmserve's flat decoder (llama_decoder.py) in the `numerics` mode,
    unless model_impl is "transformers"; any other model runs on transformers' own model, in float.
    cpu_linear "onednn" runs float32 CPU linear layers through oneDNN (see cpu_linear.py); "torch" keeps
    plain matrix products. `weight_cache_dir` keeps int8 weights once built (weight_cache.py; None: off)."""
    if cpu_linear not in CPU_LINEARS:
        raise ValueError(f"cpu_linear must be one of {', '.join(CPU_LINEARS)}, got {cpu_linear!r}")
    if model_impl not in MODEL_IMPLS:
        raise ValueError(f"model_impl must be one of {', '.join(MODEL_IMPLS)}, got {model_impl!r}")
    verify_artifact(path, sha256)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    mode = pick_numerics(numerics, dev, torch_dtype)
    config = AutoConfig.from_pretrained(path)
    reason = unsupported(config) if model_impl == "auto" else "transformers' model was asked for"
    if reason is None:
        # Only a rotated int8 decoder is cached: float weights load as they lie in the checkpoint.
        cache = weight_cache_dir if mode == "int8" else None
        model: Any = weight_cache.load(cache, sha256, config) if cache is not None else None
        if model is None:
            model = LlamaDecoder.from_checkpoint(path, config, mode, dev, torch_dtype, onednn=cpu_linear == "onednn")
            if cache is not None:
                weight_cache.save(cache, sha256, model)
    else:
        if mode == "int8":
            log.info("int8_numerics_unavailable", reason=reason)
        mode = "float"
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(dev).eval()
        if cpu_linear == "onednn":
            model = pack_linears(model, in_place=True)
    tokenizer = AutoTokenizer.from_pretrained(path)
    heap.return_free_memory()
    max_context = int(getattr(config, "max_position_embeddings", 2048) or 2048)
    reported = "int8" if mode == "int8" else str(torch_dtype).removeprefix("torch.")
    log.info(
        "model_loaded", path=str(path), device=str(dev), numerics=reported, model_impl="llmserve" if reason is None else "transformers",
        cpu_linear=cpu_linear, max_context=max_context,
    )
    architecture = ",".join(getattr(config, "architectures", None) or []) or str(getattr(config, "model_type", ""))
    return LoadedModel(model, tokenizer, eos_token_ids(config, tokenizer, path), dev, max_context, reported, architecture)


def free_model_memory(device: torch.device) -> None:
    """After the last reference to a model went: collect it now, and give CUDA's cached blocks back."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

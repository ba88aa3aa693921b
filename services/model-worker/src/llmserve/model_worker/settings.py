"""Settings of the model worker, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from llmserve.common.config import CommonSettings, env_float, env_int, env_str


@dataclass(frozen=True)
class WorkerSettings:
    common: CommonSettings = field(default_factory=CommonSettings)
    # LLMSERVE_WORKER_MODEL: the model this worker serves (default: LLMSERVE_DEFAULT_MODEL).
    model: str = ""
    # LLMSERVE_WORKER_MODEL_ALIAS: alias resolved at start ("stable"), unless a version is given.
    model_alias: str = "stable"
    # LLMSERVE_WORKER_MODEL_VERSION: serve this exact version instead of the alias (0 = use the alias).
    model_version: int = 0
    # LLMSERVE_WORKER_DEVICE: "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    device: str = "auto"
    # LLMSERVE_WORKER_DTYPE: "auto" (bfloat16 on CUDA, float32 on CPU), "float32", "bfloat16", "float16".
    dtype: str = "auto"
    # LLMSERVE_WORKER_TORCH_THREADS: intra-op threads for torch on CPU (0 = torch's default).
    torch_threads: int = 0
    # LLMSERVE_WORKER_CPU_LINEAR: "onednn" runs a float32 CPU model's linear layers through oneDNN with
    # weights reordered once at load (faster, last-bit differences from transformers); "torch" keeps
    # transformers' nn.Linear.
    cpu_linear: str = "onednn"
    # LLMSERVE_WORKER_NUMERICS: the numeric mode of the weights. "auto": int8 for a float32 model on the
    # CPU (weights rotated at load, linear and output layers in int8 with 8-bit per-row activations,
    # embedding table in int8 rows), else the model's float type; "float": the float type throughout (float32 on the CPU is
    # token-identical to transformers); "int8". Reported in heartbeats, `llmserve status` and /metrics.
    numerics: str = "auto"
    # LLMSERVE_WORKER_MODEL_IMPL: "auto" runs Llama-family models on llmserve's flat decoder (one pass per
    # engine iteration, int8 or float) and any other model on transformers' own; "transformers" always
    # uses transformers' model (float only).
    model_impl: str = "auto"
    # LLMSERVE_WORKER_ENGINE: "batching" (continuous batching) or "serial" (one request at a time).
    engine: str = "batching"
    # LLMSERVE_WORKER_MAX_RUNNING: sequences decoded together at most (the worker's slots).
    max_running: int = 32
    # LLMSERVE_WORKER_MAX_KV_TOKENS: KV-cache positions the engine may reserve (prompt + max_tokens of
    # every running request); bounds the worker's memory. SmolLM2-135M needs 46 KB per position in float32.
    max_kv_tokens: int = 65536
    # LLMSERVE_WORKER_PREFILL_CHUNK: prompt tokens prefilled per engine iteration; longer prompts are
    # prefilled in several chunks so running requests keep decoding meanwhile. 512 rather than 1024: a
    # burst of 32 prompts at once ran faster and with half the activation memory.
    prefill_chunk: int = 512
    # LLMSERVE_WORKER_PROMPT_CACHE_MB: memory for whole prompts seen before, kept with their keys,
    # values and first logits, so that the same prompt again skips its prefill (flat decoder; 0: off).
    # 48 MB holds about forty 45-token prompts of SmolLM2, or one 2,000-token one; 8 MB held six, and a
    # burst of 32 distinct prompts evicted every earlier one.
    prompt_cache_mb: float = 48.0
    # LLMSERVE_WORKER_DRAIN_GRACE_S: on SIGTERM, how long running requests may take to finish before
    # the worker hands them back to the routers, which resume them on another worker.
    drain_grace_s: float = 30.0
    # LLMSERVE_WORKER_METRICS_ADDR: host:port of the Prometheus /metrics endpoint; empty: off.
    metrics_addr: str = ""
    # LLMSERVE_PRIORITY_AGING_S: a queued job counts one priority level higher for every this many
    # seconds it has waited, so low priorities are never starved (0: strict priority, no aging).
    priority_aging_s: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if env is None else env
        common = CommonSettings.from_env(env)
        return cls(
            common=common,
            model=env_str(env, "LLMSERVE_WORKER_MODEL", common.default_model),
            model_alias=env_str(env, "LLMSERVE_WORKER_MODEL_ALIAS", "stable"),
            model_version=env_int(env, "LLMSERVE_WORKER_MODEL_VERSION", 0),
            device=env_str(env, "LLMSERVE_WORKER_DEVICE", "auto"),
            dtype=env_str(env, "LLMSERVE_WORKER_DTYPE", "auto"),
            torch_threads=env_int(env, "LLMSERVE_WORKER_TORCH_THREADS", 0),
            cpu_linear=env_str(env, "LLMSERVE_WORKER_CPU_LINEAR", "onednn"),
            numerics=env_str(env, "LLMSERVE_WORKER_NUMERICS", "auto"),
            model_impl=env_str(env, "LLMSERVE_WORKER_MODEL_IMPL", "auto"),
            engine=env_str(env, "LLMSERVE_WORKER_ENGINE", "batching"),
            max_running=env_int(env, "LLMSERVE_WORKER_MAX_RUNNING", 32),
            max_kv_tokens=env_int(env, "LLMSERVE_WORKER_MAX_KV_TOKENS", 65536),
            prefill_chunk=env_int(env, "LLMSERVE_WORKER_PREFILL_CHUNK", 512),
            prompt_cache_mb=env_float(env, "LLMSERVE_WORKER_PROMPT_CACHE_MB", 48.0),
            drain_grace_s=env_float(env, "LLMSERVE_WORKER_DRAIN_GRACE_S", 30.0),
            metrics_addr=env_str(env, "LLMSERVE_WORKER_METRICS_ADDR", ""),
            priority_aging_s=env_float(env, "LLMSERVE_PRIORITY_AGING_S", 10.0),
        )

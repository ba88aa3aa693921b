"""Settings of the model worker, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

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
    # LLMSERVE_WORKER_WEIGHT_CACHE_DIR: where int8 weights built at load are kept for the next load of the
    # same artifact (weight_cache.py; a replacement worker starts about 4 s sooner with SmolLM2 on 2
    # cores). Empty: `.cache/int8` inside the model store, shared by the workers that share the store;
    # "off": never kept.
    weight_cache_dir: str = ""
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
    # LLMSERVE_WORKER_PREFIX_CACHE_SHARE: share of the KV budget's memory (max_kv_tokens positions) that
    # keeps prompt prefixes in 64-position blocks after their requests end, for later prompts that start
    # with them: the next turn of a conversation, a shared system prompt (flat decoder; 0: off). 0.1 of
    # the default budget is about 150 MB for SmolLM2 in int8 numerics: 6,500 positions.
    prefix_cache_share: float = 0.1
    # LLMSERVE_WORKER_MAX_PREEMPTIONS: how often one running sequence may be preempted for a request of
    # a higher priority level when every slot (or the KV budget) is taken (flat decoder; 0: never
    # preempt). The bound keeps a `normal` request from being pushed back forever by a stream of `high`.
    max_preemptions: int = 3
    # LLMSERVE_WORKER_PREFERRED_WAIT_S: a job the scheduler queued for another worker (it holds the start
    # of the job's prompt) is taken by this one after waiting this long: its worker is busy or gone.
    preferred_wait_s: float = 0.5
    # LLMSERVE_WORKER_DRAIN_GRACE_S: on SIGTERM, how long running requests may take to finish before
    # the worker hands them back to the routers, which resume them on another worker.
    drain_grace_s: float = 30.0
    # LLMSERVE_WORKER_ATTACH_RETENTION_S: how long the chunks of a finished request are kept for a client
    # that re-attaches to it through another router (its router died mid-stream).
    attach_retention_s: float = 120.0
    # LLMSERVE_WORKER_TEST_CRASH_MARKER: for tests only, never in production: a job whose input contains
    # this text aborts the worker process as it starts (a "query of death"). Empty: off.
    test_crash_marker: str = ""
    # LLMSERVE_WORKER_METRICS_ADDR: host:port of the Prometheus /metrics endpoint; empty: off.
    metrics_addr: str = ""
    # LLMSERVE_WORKER_PRIORITY_AGING_S: a queued job counts one priority level higher for every this
    # many seconds it has waited, so low priorities are never starved (0: strict priority, no aging).
    # The older name LLMSERVE_PRIORITY_AGING_S is still read (and logged as deprecated).
    priority_aging_s: float = 10.0
    # Deprecated settings found in the environment, logged once logging is set up.
    deprecations: tuple[str, ...] = ()

    def weight_cache_path(self) -> Path | None:
        if self.weight_cache_dir == "off":
            return None
        return Path(self.weight_cache_dir) if self.weight_cache_dir else self.common.model_store / ".cache" / "int8"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if env is None else env
        common = CommonSettings.from_env(env)
        return cls(
            common=common,
            model=env_str(env, "LLMSERVE_WORKER_MODEL", common.default_model),
            model_alias=env_str(env, "LLMSERVE_WORKER_MODEL_ALIAS", cls.model_alias),
            model_version=env_int(env, "LLMSERVE_WORKER_MODEL_VERSION", cls.model_version),
            device=env_str(env, "LLMSERVE_WORKER_DEVICE", cls.device),
            dtype=env_str(env, "LLMSERVE_WORKER_DTYPE", cls.dtype),
            torch_threads=env_int(env, "LLMSERVE_WORKER_TORCH_THREADS", cls.torch_threads),
            cpu_linear=env_str(env, "LLMSERVE_WORKER_CPU_LINEAR", cls.cpu_linear),
            numerics=env_str(env, "LLMSERVE_WORKER_NUMERICS", cls.numerics),
            model_impl=env_str(env, "LLMSERVE_WORKER_MODEL_IMPL", cls.model_impl),
            weight_cache_dir=env_str(env, "LLMSERVE_WORKER_WEIGHT_CACHE_DIR", cls.weight_cache_dir),
            engine=env_str(env, "LLMSERVE_WORKER_ENGINE", cls.engine),
            max_running=env_int(env, "LLMSERVE_WORKER_MAX_RUNNING", cls.max_running),
            max_kv_tokens=env_int(env, "LLMSERVE_WORKER_MAX_KV_TOKENS", cls.max_kv_tokens),
            prefill_chunk=env_int(env, "LLMSERVE_WORKER_PREFILL_CHUNK", cls.prefill_chunk),
            prompt_cache_mb=env_float(env, "LLMSERVE_WORKER_PROMPT_CACHE_MB", cls.prompt_cache_mb),
            prefix_cache_share=env_float(env, "LLMSERVE_WORKER_PREFIX_CACHE_SHARE", cls.prefix_cache_share),
            max_preemptions=env_int(env, "LLMSERVE_WORKER_MAX_PREEMPTIONS", cls.max_preemptions),
            preferred_wait_s=env_float(env, "LLMSERVE_WORKER_PREFERRED_WAIT_S", cls.preferred_wait_s),
            drain_grace_s=env_float(env, "LLMSERVE_WORKER_DRAIN_GRACE_S", cls.drain_grace_s),
            attach_retention_s=env_float(env, "LLMSERVE_WORKER_ATTACH_RETENTION_S", cls.attach_retention_s),
            test_crash_marker=env_str(env, "LLMSERVE_WORKER_TEST_CRASH_MARKER", cls.test_crash_marker),
            metrics_addr=env_str(env, "LLMSERVE_WORKER_METRICS_ADDR", cls.metrics_addr),
            priority_aging_s=env_float(env, "LLMSERVE_WORKER_PRIORITY_AGING_S", env_float(env, _OLD_AGING, cls.priority_aging_s)),
            deprecations=(f"{_OLD_AGING} is deprecated: use LLMSERVE_WORKER_PRIORITY_AGING_S",) if env.get(_OLD_AGING) else (),
        )


_OLD_AGING = "LLMSERVE_PRIORITY_AGING_S"

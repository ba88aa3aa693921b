"""Fixtures: real NATS and Redis on free ports (or NATS_URL / REDIS_URL), per-test prefixes, models."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
import redis.asyncio as aioredis

from llmserve.common.catalog import ModelCatalog
from llmserve.common.config import default_model_store
from llmserve.common.keys import RedisKeys
from llmserve.common.subjects import Subjects
from llmserve.v1 import registry_pb2
from tests.helpers.registry import with_catalog
from tests.helpers.servers import ServerProcess, nats_server, redis_server

SMOLLM = "SmolLM2-135M-Instruct"
TINY = "tiny-llama"


@pytest.fixture(scope="session")
def nats_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = nats_server(tmp_path_factory.mktemp("nats"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = redis_server(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    """A subject and key prefix of this test's own."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def subjects(prefix: str) -> Subjects:
    return Subjects(prefix)


@pytest.fixture
def keys(prefix: str) -> RedisKeys:
    return RedisKeys(f"{prefix}:")


@pytest.fixture
async def nc(nats_srv: ServerProcess) -> AsyncIterator[nats.NATS]:
    client = await nats.connect(nats_srv.url, connect_timeout=5)
    yield client
    await client.close()


@pytest.fixture
async def redis_client(redis_srv: ServerProcess) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_srv.url)
    yield client
    await client.aclose()


@pytest.fixture
async def catalog(redis_client: aioredis.Redis, keys: RedisKeys) -> ModelCatalog:
    return ModelCatalog(redis_client, keys)


@pytest.fixture(scope="session")
def model_store() -> Path:
    """The shared store: the converted default model is kept between runs (content-addressed)."""
    return Path(os.environ.get("LLMSERVE_MODEL_STORE") or default_model_store())


@pytest.fixture(scope="session")
def smollm(redis_srv: ServerProcess, model_store: Path) -> registry_pb2.ModelVersion:
    """The real SmolLM2-135M-Instruct in the store (converted on the first run, about 30 s)."""
    from llmserve.registry.publish import ensure_default_model

    return asyncio.run(
        with_catalog(redis_srv.url, "session-" + uuid.uuid4().hex[:6] + ":", lambda c: ensure_default_model(c, model_store))
    )


@pytest.fixture(scope="session")
def tiny(redis_srv: ServerProcess, model_store: Path, smollm, tmp_path_factory) -> registry_pb2.ModelVersion:
    """A tiny random Llama with SmolLM2's tokenizer, in the store."""
    from llmserve.registry.publish import publish_directory
    from tests.helpers.models import build_tiny_llama

    source = build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", model_store / smollm.path)
    return asyncio.run(
        with_catalog(redis_srv.url, "session-" + uuid.uuid4().hex[:6] + ":", lambda c: publish_directory(c, model_store, TINY, source))
    )


@pytest.fixture(scope="session")
def loaded_smollm(smollm, model_store):
    """The real model loaded in this process (CPU, float32) exactly as transformers builds it: the
    reference the engines are compared with."""
    from llmserve.model_worker.loader import load_model

    return load_model(model_store / smollm.path, smollm.sha256, device="cpu", dtype="float32", cpu_linear="torch", model_impl="transformers")


@pytest.fixture(scope="session")
def flat_smollm(smollm, model_store):
    """The real model as a worker serves it, on llmserve's flat decoder: flat_smollm("int8") or
    flat_smollm("float"), each loaded once."""
    from llmserve.model_worker.loader import load_model

    loaded = {}

    def get(numerics: str):
        if numerics not in loaded:
            loaded[numerics] = load_model(model_store / smollm.path, smollm.sha256, device="cpu", dtype="float32", numerics=numerics)
        return loaded[numerics]

    return get


@pytest.fixture(scope="session")
def served_smollm(loaded_smollm):
    """transformers' model as a worker serves it with LLMSERVE_WORKER_MODEL_IMPL=transformers (linear
    layers on oneDNN), sharing every other tensor."""
    from llmserve.model_worker.cpu_linear import pack_linears

    return dataclasses.replace(loaded_smollm, model=pack_linears(loaded_smollm.model))

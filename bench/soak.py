"""Chaos soak: a bounded run of mixed load on a whole local cluster with faults drawn from a seed,
then a check of every request's history.

Cluster: a NATS cluster of three (JetStream streams with three replicas) and a Redis of its own,
registry, monitor, two schedulers, three workers, two routers.
Load: clients that each loop over requests drawn from the seed (gRPC and REST, streamed and whole,
greedy and seeded, every priority, three tenants, short and long prompts, client cancels, 20 s
deadlines on a tenth of them).
Faults, one at a time: worker kill -9 (restarted), worker SIGSTOP for 10 s, worker SIGTERM (drains,
restarted), a worker's network stalled for 10 s (it reaches NATS through a TCP proxy the soak
pauses), scheduler kill -9, router kill -9 (its clients re-attach through the other router by
request id and index), router SIGTERM (it finishes its streams, restarted), Redis restart, a NATS server killed and restarted, and promote / rollback between two versions of
the model (the same weights, so greedy answers stay comparable while every worker swaps versions
under load). The same seed replays the same schedule and load.

The check: every request has a final outcome; a stream's indexes have no repeat and (gRPC) no gap;
every greedy answer equals the undisturbed reference for its prompt; every error is of a documented
kind and falls in a fault's window. Figures and the history's verdict go to bench/results as JSON and
Markdown, with an SVG chart of tokens/s and the fault windows.

    make soak                       # 10 minutes, seed 1
    SOAK_MINUTES=3 SOAK_SEED=7 make soak
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402
import httpx  # noqa: E402

from bench.stack import publish_default_model  # noqa: E402
from llmserve.cli import infra  # noqa: E402
from llmserve.v1 import common_pb2, inference_pb2, inference_pb2_grpc, registry_pb2, registry_pb2_grpc  # noqa: E402
from tests.helpers.cluster import Cluster  # noqa: E402
from tests.helpers.registry import with_catalog  # noqa: E402
from tests.helpers.servers import ServerProcess, nats_cluster  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
SHORT = ["What is the capital of France?", "Name three colours.", "Why is the sky blue?", "Who wrote Hamlet?"]
LONG = [
    "Here are the museum's rules. " + "Visitors keep to the marked paths, leave bags at the desk and do not touch the exhibits. " * 8
    + "Summarise them.",
    "A recipe: " + "mix flour, water and salt, knead for ten minutes, rest the dough for an hour, shape it and bake it. " * 8
    + "What is the first step?",
]
PRIORITIES = ["low", "normal", "normal", "high", "critical"]
TENANTS = ["acme", "globex", "initech"]
FAULTS = ["worker_kill", "worker_stop", "worker_term", "worker_net_stall", "scheduler_kill", "router_kill", "router_term",
          "redis_restart", "nats_restart", "promote"]
# Share of requests with a deadline, and its length (generous: only a fault should make one pass).
DEADLINE_SHARE = 0.1
DEADLINE_S = 20.0
# The worker whose NATS connection goes through the pausable proxy.
STALLED_WORKER = "worker-2"
# Errors a client may see during a fault, and after it while the cluster recovers (seconds).
DOCUMENTED = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "503", "504", "429"}
RECOVERY_GRACE_S = 20.0
# A fault's own length: how long a SIGSTOPped worker stays stopped; a restart's pause.
STOP_S = 10.0
RESTART_AFTER_S = 1.0
# A router or worker fault waits at most this long for a stream through that router (stream_in_flight),
# or a request on that worker (worker_running).
FAULT_WAIT_S = 10.0


@dataclass
class Fault:
    at_s: float
    kind: str
    target: str = ""
    ended_s: float = 0.0
    recovered_s: float | None = None


@dataclass
class Outcome:
    rid: str
    api: str
    stream: bool
    greedy: bool
    prompt: int
    max_tokens: int
    priority: str
    tenant: str
    started_s: float
    first_s: float | None = None
    ended_s: float | None = None
    status: str | None = None
    message: str = ""
    indexes: list = field(default_factory=list)
    text: str = ""
    tokens: int = 0
    attaches: int = 0
    # A whole answer whose router died under it, asked again (new id) as OpenAI's and gRPC's clients do.
    retried: bool = False
    cancelled_by_client: bool = False
    # The request's deadline, in seconds from its start (None: none).
    deadline_s: float | None = None
    # Index of the router the current try goes through.
    via: int = -1


class StallableProxy:
    """A TCP proxy one worker reaches NATS through. Paused, it forwards nothing either way: the
    worker's network stalls while its process runs on (unlike SIGSTOP)."""

    def __init__(self, upstreams: list[tuple[str, int]]) -> None:
        self._upstreams = upstreams
        self.port = infra.free_port()
        self._open = threading.Event()
        self._open.set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nats-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(asyncio.start_server(self._connection, "127.0.0.1", self.port), self._loop).result(10)

    def pause(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    def stop(self) -> None:
        self._open.set()
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for upstream in self._upstreams:  # the first server that answers
            try:
                up_reader, up_writer = await asyncio.open_connection(*upstream)
                break
            except OSError:
                continue
        else:  # none answers: the worker's client reconnects
            writer.close()
            return
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                while not self._open.is_set():
                    await asyncio.sleep(0.05)
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            sink.close()


class Soak:
    def __init__(self, minutes: float, seed: int, work: Path, store: Path, log) -> None:
        self.minutes = minutes
        self.seed = seed
        self.work = work
        self.store = store
        self.log = log
        self.t0 = 0.0
        self.faults: list[Fault] = []
        self.outcomes: list[Outcome] = []
        self.references: dict[tuple[int, int], str] = {}
        self.services: dict[str, tuple[str, dict]] = {}
        self.routers: list[tuple[str, str]] = []
        self.rss_samples: list[dict] = []
        # Each worker's metrics (and /readyz) port.
        self.worker_ports: dict[str, int] = {}
        self.unloads_before: dict[str, int] = {}

    def now(self) -> float:
        return time.monotonic() - self.t0

    # -- the cluster ------------------------------------------------------------------------------
    def start_cluster(self) -> None:
        # Servers of its own whatever NATS_URL / REDIS_URL say: the soak restarts them. Clients keep to
        # their seed list (no_advertise), so the worker behind the proxy never goes around it.
        self.nats_nodes = nats_cluster(self.work, 3, no_advertise=True)
        self.redis = ServerProcess("redis", f"redis://127.0.0.1:{infra.free_port()}/0", self.work / "redis")
        self.redis.start()
        prefix = "soak" + uuid.uuid4().hex[:6]
        record = asyncio.run(publish_default_model(self.redis.url, f"{prefix}:", self.store))
        # Version 2: the same artifact, for promote and rollback under load.
        asyncio.run(with_catalog(self.redis.url, f"{prefix}:", lambda c: c.publish(record.name, record.path, record.sha256, "soak")))
        self.stable = record.version
        self.proxy = StallableProxy([("127.0.0.1", node.port) for node in self.nats_nodes])
        self.proxy.start()
        seeds = ",".join(node.url for node in self.nats_nodes)
        c = self.cluster = Cluster(seeds, self.redis.url, prefix, self.store, self.work / "logs")
        c.extra_env.update(LLMSERVE_MONITOR_PROBE_INTERVAL_S="0", LLMSERVE_WORKER_DRAIN_GRACE_S="5", LLMSERVE_WORKER_MAX_RUNNING="8",
                           LLMSERVE_NATS_JS_REPLICAS="3")
        c.log_dir.mkdir(parents=True, exist_ok=True)
        self._start("registry", "registry", LLMSERVE_REGISTRY_GRPC_ADDR=c.registry_addr,
                    LLMSERVE_REGISTRY_METRICS_ADDR=f"127.0.0.1:{c.registry_metrics_port}")
        for i in range(2):
            self._start("scheduler", f"scheduler-{i}")
        self._start("monitor", "monitor")
        for i in range(3):
            name = f"worker-{i}"
            self.worker_ports[name] = infra.free_port()
            network = {"LLMSERVE_NATS_URL": self.proxy.url} if name == STALLED_WORKER else {}
            self._start("model_worker", name, LLMSERVE_WORKER_METRICS_ADDR=f"127.0.0.1:{self.worker_ports[name]}", **network)
        for i in range(2):
            grpc_port, http_port = (c.grpc_port, c.http_port) if i == 0 else (infra.free_port(), infra.free_port())
            self._start("router", f"router-{i}", LLMSERVE_ROUTER_GRPC_ADDR=f"127.0.0.1:{grpc_port}",
                        LLMSERVE_ROUTER_HTTP_ADDR=f"127.0.0.1:{http_port}")
            self.routers.append((f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}"))
        c.wait_ready(180)
        c.wait_workers(3, 180)
        for _, http in self.routers:
            c.until(lambda url=http: _ready(url), 60, "router not ready")

    def _start(self, module: str, name: str, **env: str) -> None:
        self.services[name] = (module, env)
        self.cluster.start_service(module, name, **env)

    def _process(self, name: str):
        return next(s for s in self.cluster.services if s.name == name and s.proc is not None and s.proc.poll() is None)

    def _restart(self, name: str) -> None:
        self.cluster.services[:] = [s for s in self.cluster.services if s.name != name]
        module, env = self.services[name]
        self.cluster.start_service(module, name, **env)

    def stop_cluster(self) -> None:
        self.cluster.stop()
        self.proxy.stop()
        for node in self.nats_nodes:
            node.stop()
        self.redis.stop()

    def rss_mb(self) -> dict[str, dict]:
        out = {}
        for service in self.cluster.services:
            if service.proc is None or service.proc.poll() is not None:
                continue
            try:
                for line in Path(f"/proc/{service.proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out[service.name] = {"pid": service.proc.pid, "rss_mb": int(line.split()[1]) / 1024}
            except OSError:
                pass
        return out

    # -- faults -----------------------------------------------------------------------------------
    def schedule(self, rng: random.Random, length_s: float) -> list[Fault]:
        """One fault every 25-35 s from 20 s on, none in the last 40 s; kinds in a shuffled cycle."""
        faults, at, kinds = [], 20.0, []
        while at < length_s - 40.0:
            if not kinds:
                kinds = rng.sample(FAULTS, len(FAULTS))
            kind = kinds.pop()
            target = {"worker_kill": "worker", "worker_stop": "worker", "worker_term": "worker", "scheduler_kill": "scheduler",
                      "router_kill": "router", "router_term": "router", "worker_net_stall": STALLED_WORKER, "promote": MODEL, "nats_restart": "nats"}.get(kind, "redis")
            if target in ("worker", "scheduler", "router", "nats"):
                target = f"{target}-{rng.randrange(2 if target in ('scheduler', 'router') else 3)}"
            faults.append(Fault(round(at, 1), kind, target))
            at += rng.uniform(25.0, 35.0)
        return faults

    def inject(self, fault: Fault) -> None:
        """Runs one fault to its end (the service restarted, resumed or back)."""
        kind, name = fault.kind, fault.target
        if kind in ("worker_kill", "scheduler_kill", "router_kill"):
            self._process(name).signal(signal.SIGKILL)
            time.sleep(RESTART_AFTER_S)
            self._restart(name)
        elif kind == "worker_stop":
            service = self._process(name)
            service.signal(signal.SIGSTOP)
            time.sleep(STOP_S)
            service.signal(signal.SIGCONT)
        elif kind in ("worker_term", "router_term"):
            # Drains (a router finishes its open streams within its grace), then starts again.
            service = self._process(name)
            service.signal(signal.SIGTERM)
            service.proc.wait(60)
            self._restart(name)
        elif kind == "worker_net_stall":
            self.proxy.pause()
            time.sleep(STOP_S)
            self.proxy.resume()
        elif kind == "promote":
            # Promote version 2, or roll back to version 1 when 2 is stable: every worker swaps.
            self.unloads_before = {name: self.unloads(name) for name in self.worker_ports}
            with grpc.insecure_channel(self.cluster.registry_addr) as channel:
                stub = registry_pb2_grpc.RegistryStub(channel)
                if self.stable == 1:
                    stub.Promote(registry_pb2.PromoteRequest(name=MODEL, version=2, actor="soak"), timeout=30)
                    self.stable, fault.target = 2, f"{MODEL} v2"
                else:
                    stub.Rollback(registry_pb2.RollbackRequest(name=MODEL, actor="soak"), timeout=30)
                    self.stable, fault.target = 1, f"{MODEL} v1 (rollback)"
        elif kind == "redis_restart":
            self.redis.stop()
            time.sleep(RESTART_AFTER_S)
            self.redis.start()
        elif kind == "nats_restart":
            node = self.nats_nodes[int(name.rsplit("-", 1)[1])]
            node.kill()
            time.sleep(RESTART_AFTER_S)
            node.start()

    async def run_faults(self, faults: list[Fault], end_s: float) -> None:
        for fault in faults:
            await asyncio.sleep(max(0.0, fault.at_s - self.now()))
            if fault.kind in ("router_kill", "router_term"):
                await self.stream_in_flight(int(fault.target.rsplit("-", 1)[1]))
            elif fault.kind.startswith("worker_"):
                await self.worker_running(fault.target)
            fault.at_s = round(self.now(), 2)
            self.log(f"  {fault.at_s:6.1f} s  fault {fault.kind} {fault.target}")
            await asyncio.to_thread(self.inject, fault)
            fault.ended_s = round(self.now(), 2)
            fault.recovered_s = await self.recovered(end_s, fault)

    async def stream_in_flight(self, router: int) -> None:
        """Until a stream through `router` has received pieces and not ended (at most FAULT_WAIT_S):
        a router fault then cuts at least one stream, which its client re-attaches through the other."""
        give_up = self.now() + FAULT_WAIT_S
        while self.now() < give_up:
            if any(o.stream and o.via == router and o.status is None and len(o.indexes) >= 2 for o in self.outcomes[-200:]):
                return
            await asyncio.sleep(0.05)

    async def worker_running(self, name: str) -> None:
        """Until worker `name` runs a request (its slots-busy gauge, at most FAULT_WAIT_S): a
        worker fault then interrupts at least one request, which migrates to another worker."""
        give_up = self.now() + FAULT_WAIT_S
        url = f"http://127.0.0.1:{self.worker_ports[name]}/metrics"
        async with httpx.AsyncClient(timeout=2) as http:
            while self.now() < give_up:
                try:
                    text = (await http.get(url)).text
                    busy = next((float(line.split()[1]) for line in text.splitlines() if line.startswith("llmserve_worker_slots_busy ")), 0.0)
                    if busy >= 1:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)

    async def recovered(self, end_s: float, fault: Fault) -> float | None:
        """When the cluster is whole again after a fault: a probe request through each router succeeds
        and every worker is ready, and after a promote every worker unloaded the version it left
        (None: not before the run's end)."""
        while self.now() < end_s:
            try:
                if fault.kind == "promote" and any(self.unloads(name) <= count for name, count in self.unloads_before.items()):
                    raise _NotYet
                for grpc_addr, _ in self.routers:
                    async with grpc.aio.insecure_channel(grpc_addr) as channel:
                        stub = inference_pb2_grpc.InferenceStub(channel)
                        await stub.Generate(_request(0, 4, "critical", "probe", None), timeout=5)
                if not await asyncio.to_thread(self.workers_ready):
                    raise _NotYet
                return round(self.now(), 2)
            except (grpc.aio.AioRpcError, _NotYet):
                await asyncio.sleep(0.5)
        return None

    def unloads(self, worker: str) -> int:
        """Versions a worker unloaded after moving to another one (its log's version_unloaded events)."""
        return _count_events(self.cluster.log_dir / f"{worker}.log", "version_unloaded")

    def workers_ready(self) -> bool:
        """Every worker answers ready on its own /readyz (a restarted one: its model loaded)."""
        for port in self.worker_ports.values():
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code != 200:
                    return False
            except httpx.HTTPError:
                return False
        return True

    async def sample_rss(self, end_s: float) -> None:
        """Every service's resident memory every 10 s, for the growth figures."""
        while self.now() < end_s:
            self.rss_samples.append({"t_s": round(self.now(), 1), **{name: r for name, r in self.rss_mb().items()}})
            await asyncio.sleep(10.0)

    # -- load -------------------------------------------------------------------------------------
    async def reference_texts(self) -> None:
        grpc_addr = self.routers[0][0]
        async with grpc.aio.insecure_channel(grpc_addr) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)

            async def one(prompt: int, max_tokens: int) -> None:
                answer = await stub.Generate(_request(prompt, max_tokens, "normal", "acme", None), timeout=120)
                self.references[(prompt, max_tokens)] = answer.text

            await asyncio.gather(*(one(p, m) for p in range(len(SHORT) + len(LONG)) for m in (16, 48)))

    async def client(self, index: int, end_s: float) -> None:
        rng = random.Random(self.seed * 1000 + index)
        n = 0
        while self.now() < end_s:
            n += 1
            greedy = rng.random() < 0.75
            outcome = Outcome(
                rid=f"soak{self.seed}-{index}-{n}", api=rng.choice(["grpc", "rest"]), stream=rng.random() < 0.7, greedy=greedy,
                prompt=rng.randrange(len(SHORT) + len(LONG)), max_tokens=rng.choice((16, 48)), priority=rng.choice(PRIORITIES),
                tenant=rng.choice(TENANTS), started_s=self.now(), deadline_s=DEADLINE_S if rng.random() < DEADLINE_SHARE else None,
            )
            seed = None if greedy else rng.randrange(1 << 30)
            cancel_after = rng.randrange(2, 6) if outcome.stream and rng.random() < 0.08 else None
            router = rng.randrange(2)
            self.outcomes.append(outcome)
            if outcome.api == "grpc":
                await self.grpc_call(outcome, seed, cancel_after, router)
            else:
                await self.rest_call(outcome, seed, cancel_after, router)
            outcome.ended_s = self.now()

    async def grpc_call(self, o: Outcome, seed: int | None, cancel_after: int | None, router: int) -> None:
        request = _request(o.prompt, o.max_tokens, o.priority, o.tenant, seed)
        request.request_id = o.rid
        tenant = (("x-tenant", o.tenant),)
        timeout = o.deadline_s or 120.0
        for attempt in range(3):
            o.via = (router + attempt) % 2
            addr = self.routers[o.via][0]
            try:
                async with grpc.aio.insecure_channel(addr) as channel:
                    stub = inference_pb2_grpc.InferenceStub(channel)
                    if not o.stream:
                        answer = await stub.Generate(request, timeout=timeout, metadata=tenant)
                        o.text, o.tokens, o.status, o.first_s = answer.text, answer.usage.completion_tokens, "ok", self.now()
                        return
                    if o.indexes:
                        request.resume_from_index = o.indexes[-1] + 1
                        o.attaches += 1
                    async for response in stub.GenerateStream(request, timeout=timeout, metadata=tenant):
                        o.first_s = o.first_s or self.now()
                        o.indexes.append(response.index)
                        o.text += response.text
                        if response.finish_reason:
                            o.tokens = response.usage.completion_tokens
                        if cancel_after is not None and len(o.indexes) >= cancel_after:
                            o.status, o.cancelled_by_client = "cancelled", True
                            return
                    o.status = "ok"
                    return
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND and o.attaches:
                    return  # nobody holds it any more: the error that cut the stream stands
                o.status, o.message = exc.code().name, (exc.details() or "")[:200]
                # A router that is down was never reached: the other one takes the request (same id).
                # A router that died under a stream: re-attach through the other one. A whole answer
                # cannot be re-attached to; any other error is the answer.
                unreachable = exc.code() == grpc.StatusCode.UNAVAILABLE and _refused(exc.details() or "") and not o.indexes
                if not o.stream and exc.code() == grpc.StatusCode.UNAVAILABLE and not unreachable and not o.retried:
                    o.retried, request.request_id = True, f"{o.rid}-retry"
                    continue
                if not (unreachable or (o.stream and exc.code() == grpc.StatusCode.UNAVAILABLE and o.indexes)):
                    return

    async def rest_call(self, o: Outcome, seed: int | None, cancel_after: int | None, router: int) -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": _prompt(o.prompt)}], "max_tokens": o.max_tokens,
                "ignore_eos": True, "priority": o.priority, "stream": o.stream}
        if seed is None:
            body["temperature"] = 0
        else:
            body.update(temperature=0.8, seed=seed)
        headers = {"x-request-id": o.rid, "x-tenant": o.tenant}
        if o.deadline_s:
            headers["x-request-timeout"] = str(o.deadline_s)
        # The id of the last event with one; "" once the stream started (a re-attach from its start).
        last_id = None
        for attempt in range(4):
            o.via = (router + attempt) % 2
            url = self.routers[o.via][1]
            cut = (o.status, o.message)
            o.status = None
            try:
                async with httpx.AsyncClient(timeout=120) as http:
                    if not o.stream:
                        r = await http.post(f"{url}/v1/chat/completions", json=body, headers=headers)
                        if r.status_code != 200:
                            o.status, o.message = str(r.status_code), r.text[:200]
                            return
                        answer = r.json()
                        o.text, o.tokens, o.status, o.first_s = answer["choices"][0]["message"]["content"], answer["usage"]["completion_tokens"], "ok", self.now()
                        return
                    if last_id is not None:
                        headers["last-event-id"] = str(last_id)
                        o.attaches += 1
                    async with http.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as r:
                        if r.status_code != 200:
                            if r.status_code == 404 and o.attaches:
                                if not o.indexes and not o.retried:
                                    # Cut before any answer and held by no worker: it never ran; ask again.
                                    o.retried, last_id = True, None
                                    headers["x-request-id"] = f"{o.rid}-retry"
                                    headers.pop("last-event-id", None)
                                    continue
                                o.status, o.message = cut  # nobody holds it any more: what cut the stream stands
                                return
                            o.status, o.message = str(r.status_code), (await r.aread()).decode()[:200]
                            return
                        # A 200 comes once the request runs: from here a cut stream can be re-attached to.
                        last_id = "" if last_id is None else last_id
                        event_id = None
                        async for line in r.aiter_lines():
                            if line.startswith("id: "):
                                event_id = int(line[4:])
                            elif line == "data: [DONE]":
                                o.status = o.status or "ok"
                                return
                            elif line.startswith("data: "):
                                payload = json.loads(line[6:])
                                if "error" in payload:
                                    error = payload["error"]
                                    o.status, o.message = str(error.get("code") or error.get("type")).upper(), str(error)[:200]
                                    continue
                                o.first_s = o.first_s or self.now()
                                choices = payload.get("choices") or []
                                if choices:
                                    o.text += choices[0]["delta"].get("content") or ""
                                if payload.get("usage"):
                                    o.tokens = payload["usage"]["completion_tokens"]
                                if event_id is not None:
                                    o.indexes.append(event_id)
                                    last_id = event_id
                                    event_id = None
                                if cancel_after is not None and len(o.indexes) >= cancel_after:
                                    o.status, o.cancelled_by_client = "cancelled", True
                                    return
                o.status, o.message = "cut", "stream ended without [DONE]"
            except httpx.HTTPError as exc:
                o.status, o.message = "cut" if o.stream else "connection", f"{type(exc).__name__}: {exc}"[:200]
                if isinstance(exc, httpx.ConnectError) and last_id is None:
                    continue  # the router is down and was never reached: the other one takes it (same id)
                if o.stream and last_id is None and not o.attaches:
                    last_id = ""  # cut before its response: it may run all the same; re-attach from the start
                    continue
                if not o.stream and not o.retried:
                    o.retried, headers["x-request-id"] = True, f"{o.rid}-retry"
                    continue
                if not o.stream or last_id is None:
                    return

    # -- the run ----------------------------------------------------------------------------------
    def run(self) -> dict:
        self.log(f"soak: {self.minutes} min, seed {self.seed}: starting the cluster ...")
        self.start_cluster()
        try:
            return asyncio.run(self._run())
        finally:
            self.stop_cluster()

    async def _run(self) -> dict:
        await self.reference_texts()
        rng = random.Random(self.seed)
        length_s = self.minutes * 60.0
        self.faults = self.schedule(rng, length_s)
        rss_start = self.rss_mb()
        self.t0 = time.monotonic()
        self.log(f"soak: load for {length_s:.0f} s with {len(self.faults)} faults")
        clients = [asyncio.create_task(self.client(i, length_s)) for i in range(6)]
        sampler = asyncio.create_task(self.sample_rss(length_s))
        await self.run_faults(self.faults, length_s)
        await asyncio.wait_for(asyncio.gather(*clients, sampler), 300)
        return self.report(rss_start, self.rss_mb(), length_s)

    # -- the check and the figures ----------------------------------------------------------------
    def window(self, t: float) -> Fault | None:
        for fault in self.faults:
            end = (fault.recovered_s or fault.ended_s) + RECOVERY_GRACE_S
            if fault.at_s - 1.0 <= t <= end:
                return fault
        return None

    def report(self, rss_start: dict, rss_end: dict, length_s: float) -> dict:
        problems: list[str] = []
        lost = [o.rid for o in self.outcomes if o.status is None]
        repeats = []
        for o in self.outcomes:
            if len(o.indexes) != len(set(o.indexes)) or o.indexes != sorted(o.indexes):
                repeats.append(o.rid)
            elif o.api == "grpc" and o.stream and o.indexes != list(range(len(o.indexes))):
                repeats.append(o.rid)
        differ = [o.rid for o in self.outcomes if o.status == "ok" and o.greedy and o.text != self.references[(o.prompt, o.max_tokens)]]
        errors = [o for o in self.outcomes if o.status not in ("ok", "cancelled")]
        unexplained = [f"{o.rid} {o.status} at {o.ended_s:.1f} s: {o.message}" for o in errors
                       if o.status not in DOCUMENTED or self.window(o.ended_s or o.started_s) is None]
        for name, items in (("lost", lost), ("repeated or missing pieces", repeats), ("greedy answers differing", differ),
                            ("unexplained errors", unexplained)):
            if items:
                problems.append(f"{len(items)} {name}: {items[:10]}")
        ok = [o for o in self.outcomes if o.status == "ok"]

        def figures(rows: list[Outcome]) -> dict:
            ttft = sorted(o.first_s - o.started_s for o in rows if o.first_s is not None and o.stream)
            rates = [o.tokens / (o.ended_s - o.started_s) for o in rows if o.ended_s and o.ended_s > o.started_s and o.tokens]
            return {"requests": len(rows), "ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99),
                    "tokens_per_s_per_request_p50": round(statistics.median(rates), 2) if rates else None}

        during = [o for o in ok if self.window(o.started_s) is not None]
        outside = [o for o in ok if self.window(o.started_s) is None]
        migrations = sum(_count_events(path, "request_migrated") for path in self.cluster.log_dir.glob("router-*.log"))
        attached = sum(_count_events(path, "request_attached") for path in self.cluster.log_dir.glob("router-*.log"))
        handed = sum(_count_events(path, "job_handed_directly") for path in self.cluster.log_dir.glob("scheduler*.log"))
        swaps = [(f.at_s, (f.recovered_s or f.ended_s) + RECOVERY_GRACE_S) for f in self.faults if f.kind == "promote"]
        growth = memory_growth(rss_start, rss_end, self.rss_samples, length_s, swaps)
        buckets = [0.0] * (int(length_s // 5) + 1)
        for o in ok:
            if o.ended_s is not None and o.tokens:
                buckets[min(len(buckets) - 1, int(o.ended_s // 5))] += o.tokens / 5
        return {
            "minutes": self.minutes, "seed": self.seed, "verdict": "pass" if not problems else "fail", "problems": problems,
            "requests": len(self.outcomes), "completed": len(ok), "cancelled_by_clients": sum(o.cancelled_by_client for o in self.outcomes),
            "errors": {status: sum(1 for o in errors if o.status == status) for status in sorted({o.status for o in errors})},
            "lost": len(lost), "repeated_or_missing": len(repeats), "greedy_checked": sum(1 for o in ok if o.greedy),
            "greedy_differing": len(differ), "unexplained_errors": len(unexplained), "re_attaches": attached, "migrations": migrations,
            "handed_directly": handed,
            "whole_answers_retried": sum(o.retried for o in self.outcomes),
            "during_faults": figures(during), "outside_faults": figures(outside),
            "faults": [asdict(f) | {"lasted_s": round(f.ended_s - f.at_s, 2),
                                    "recovery_s": round(f.recovered_s - f.ended_s, 2) if f.recovered_s else None} for f in self.faults],
            "rss_samples": self.rss_samples,
            "rss": growth, "tokens_per_s_5s": [round(b, 1) for b in buckets],
            # Reference answers once; each request's answer as its hash and length (same hash: same text).
            "references": {f"{prompt}/{max_tokens}": text for (prompt, max_tokens), text in self.references.items()},
            "history": [_compact(o) for o in self.outcomes],
        }


def _request(prompt: int, max_tokens: int, priority: str, tenant: str, seed: int | None) -> inference_pb2.GenerateRequest:
    sampling = common_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    if seed is not None:
        sampling.temperature = 0.8
        sampling.seed = seed
    return inference_pb2.GenerateRequest(
        model=MODEL,
        messages=inference_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content=_prompt(prompt))]),
        sampling=sampling,
        priority=common_pb2.Priority.Value(f"PRIORITY_{priority.upper()}"),
    )


def _prompt(index: int) -> str:
    return (SHORT + LONG)[index]


def memory_growth(rss_start: dict, rss_end: dict, samples: list[dict], length_s: float, swaps: list[tuple[float, float]]) -> dict:
    """Each service's resident memory at start and end, its peak, and its growth per hour: the slope over
    the run's second half, fitted within each stretch between version swaps and pooled, leaving out
    the swaps themselves (`swaps`: each one's start and recovery). A swap holds two models for a
    moment and may leave the level higher once (the allocator keeps freed pages); that step is not
    growth, a steady climb within the stretches is. Caches filling at the start are not growth either.
    Other faults stay in: they change the load, not what a process keeps. None for a service
    restarted during the run."""
    growth = {}
    for name, start in rss_start.items():
        end = rss_end.get(name)
        if not end or end["pid"] != start["pid"]:
            growth[name] = {"start_mb": round(start["rss_mb"], 1), "end_mb": round(end["rss_mb"], 1) if end else None,
                            "growth_mb_per_hour": None, "note": "restarted during the run"}
            continue
        stretches: dict[int, list[tuple[float, float]]] = {}
        for row in samples:
            t = row["t_s"]
            swapping = any(begin <= t <= end_s for begin, end_s in swaps)
            if t >= length_s / 2 and name in row and row[name]["pid"] == start["pid"] and not swapping:
                stretches.setdefault(sum(1 for begin, _ in swaps if begin <= t), []).append((t, row[name]["rss_mb"]))
        quiet = sum(len(points) for points in stretches.values())
        slope = _pooled_slope(list(stretches.values()))
        per_hour = slope * 3600 if slope is not None else (end["rss_mb"] - start["rss_mb"]) * 3600 / length_s
        peak = max((row[name]["rss_mb"] for row in samples if name in row and row[name]["pid"] == start["pid"]), default=end["rss_mb"])
        growth[name] = {"start_mb": round(start["rss_mb"], 1), "end_mb": round(end["rss_mb"], 1), "peak_mb": round(peak, 1),
                        "growth_mb_per_hour": round(per_hour, 1), "quiet_samples": quiet}
    return growth


def _compact(o: Outcome) -> dict:
    row = asdict(o)
    text = row.pop("text")
    row["text_sha256"] = hashlib.sha256(text.encode()).hexdigest()[:16]
    row["text_chars"] = len(text)
    row["started_s"], row["first_s"], row["ended_s"] = (round(t, 3) if t is not None else None for t in (o.started_s, o.first_s, o.ended_s))
    return row


class _NotYet(Exception):
    pass


def _pooled_slope(groups: list[list[tuple[float, float]]]) -> float | None:
    """Least-squares slope, per second, of (t, y) points in groups that may each sit at their own level
    (one line per group, all with the same slope); None with fewer than three points in groups of two
    or more."""
    groups = [g for g in groups if len(g) >= 2]
    if sum(len(g) for g in groups) < 3:
        return None
    covariance = variance = 0.0
    for points in groups:
        mean_t = sum(t for t, _ in points) / len(points)
        mean_y = sum(y for _, y in points) / len(points)
        covariance += sum((t - mean_t) * (y - mean_y) for t, y in points)
        variance += sum((t - mean_t) ** 2 for t, _ in points)
    return covariance / variance if variance else 0.0


def _refused(details: str) -> bool:
    """A gRPC error that says the router could not be reached at all."""
    details = details.lower()
    return "failed to connect" in details or "connection refused" in details


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _pct(values: list[float], p: int) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(len(values) * p / 100))], 3)


def _count_events(path: Path, event: str) -> int:
    needle = f'"event": "{event}"'
    return sum(1 for line in path.read_text(errors="replace").splitlines() if needle in line)


def markdown(report: dict) -> str:
    lines = [
        f"# Chaos soak: {report['minutes']} minutes, seed {report['seed']}: **{report['verdict']}**", "",
        f"- Requests {report['requests']}, completed {report['completed']}, cancelled by their clients {report['cancelled_by_clients']}, "
        f"errors {report['errors'] or 'none'}",
        f"- Lost {report['lost']}; repeated or missing pieces {report['repeated_or_missing']}; greedy answers checked "
        f"{report['greedy_checked']}, differing {report['greedy_differing']}; unexplained errors {report['unexplained_errors']}",
        f"- Migrations {report['migrations']}, re-attaches after a router died {report['re_attaches']}, whole answers asked "
        f"again after their router died {report['whole_answers_retried']}, jobs handed to a worker directly while the queue had "
        f"no leader {report.get('handed_directly', 0)}", "",
        "| | requests | TTFT p50 | TTFT p99 | tokens/s per request (p50) |", "|---|---|---|---|---|",
    ]
    for name in ("during_faults", "outside_faults"):
        f = report[name]
        lines.append(f"| {name.replace('_', ' ')} | {f['requests']} | {f['ttft_p50_s']} s | {f['ttft_p99_s']} s | {f['tokens_per_s_per_request_p50']} |")
    lines += ["", "Recovered: a probe through each router answers and all three workers are ready again.", "",
              "| at | fault | target | lasted | recovered after its end |", "|---|---|---|---|---|"]
    lines += [f"| {f['at_s']:.1f} s | {f['kind']} | {f['target']} | {f['lasted_s']} s | {f['recovery_s']} s |" for f in report["faults"]]
    lines += ["", "Growth per hour: the slope of the resident memory over the run's second half, fitted within each "
              "stretch between version swaps (the swaps left out).", "",
              "| service | RSS at start | at end | peak | growth per hour |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {r['start_mb']} MB | {r['end_mb']} MB | {str(r['peak_mb']) + ' MB' if 'peak_mb' in r else '–'} | "
              f"{r['growth_mb_per_hour'] if r['growth_mb_per_hour'] is not None else r.get('note')} |"
              for name, r in sorted(report["rss"].items())]
    if report["problems"]:
        lines += ["", "## Problems", *[f"- {p}" for p in report["problems"]]]
    return "\n".join(lines) + "\n"


def chart(report: dict) -> str:
    """Tokens/s delivered per 5 s, fault windows shaded: an SVG with no dependency."""
    values = report["tokens_per_s_5s"]
    width, height, pad = 800, 240, 30
    top = max(values + [1.0])
    step = (width - 2 * pad) / max(1, len(values) - 1)
    points = " ".join(f"{pad + i * step:.1f},{height - pad - v / top * (height - 2 * pad):.1f}" for i, v in enumerate(values))
    shades = []
    for f in report["faults"]:
        x0 = pad + f["at_s"] / 5 * step
        x1 = pad + ((f["at_s"] + f["lasted_s"] + (f["recovery_s"] or 0)) / 5) * step
        shades.append(f'<rect x="{x0:.1f}" y="{pad}" width="{max(2.0, x1 - x0):.1f}" height="{height - 2 * pad}" fill="#f4b4b4">'
                      f'<title>{f["kind"]} {f["target"]}</title></rect>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">'
            f'<rect width="100%" height="100%" fill="white"/>{"".join(shades)}'
            f'<polyline points="{points}" fill="none" stroke="#1f5fa8" stroke-width="1.5"/>'
            f'<text x="{pad}" y="18">tokens/s delivered (peak {top:.0f}); shaded: fault until recovery</text></svg>\n')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "10")))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED", "1")))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    from llmserve.common.config import default_model_store

    store = Path(os.environ.get("LLMSERVE_MODEL_STORE") or default_model_store())
    with tempfile.TemporaryDirectory(prefix="llmserve-soak-") as work:
        report = Soak(args.minutes, args.seed, Path(work), store, lambda m: print(m, flush=True)).run()
    name = f"{dt.date.today().isoformat()}-soak"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{name}.json").write_text(json.dumps(report, separators=(",", ":")) + "\n")
    (args.results / f"{name}.md").write_text(markdown(report))
    (args.results / f"{name}.svg").write_text(chart(report))
    print(markdown(report))
    return 0 if report["verdict"] == "pass" else 1


if __name__ == "__main__":
    raise SystemExit(main())

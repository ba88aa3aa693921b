"""Every NATS subject and JetStream name llmserve uses. No other module builds subjects.

Layout (prefix "llm" by default):
  llm.sched.submit                      router -> scheduler, request/reply, queue group "scheduler"
  llm.sched.done                        router -> scheduler, JobDone: a request ended (frees its tenant's share)
  llm.jobs.<model>.<version>.p<N>       scheduler -> workers, JetStream work queue (one stream per model,
                                        LLM_JOBS_<model>, so each model's queue has its own bound)
  llm.jobs.<model>.<version>.p<N>.<instance>
                                        the same, for one worker first (cache-aware dispatch)
  llm.doorbell.<model>.<version>        scheduler -> workers, "a job is waiting" doorbell (core NATS):
                                        "<N>", or "<N> <instance>" for a job queued for one worker
  llm.tokens.<request_id>               worker -> router, TokenChunk messages
  llm.cancel.<request_id>               router -> workers, Cancel
  llm.hb.<kind>.<instance_id>           every instance -> monitor, schedulers, routers: Heartbeat
  llm.events.<what>                     monitor -> everyone: InstanceEvent and the like
  llm.events.registry                   registry -> workers and anyone: RegistryChange (an audit entry)
  llm.events.model_refused              worker -> anyone: ModelRefused (an artifact failed verification)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmserve.v1 import common_pb2

# Model names become subject tokens and consumer names: no dots, wildcards or spaces.
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# Request ids become subject tokens.
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]+$")

# Priorities that have a queue subject, highest first: the order workers pull in.
PRIORITIES_HIGH_FIRST = (
    common_pb2.PRIORITY_CRITICAL,
    common_pb2.PRIORITY_HIGH,
    common_pb2.PRIORITY_NORMAL,
    common_pb2.PRIORITY_LOW,
)


# Header of a job handed to a worker directly: the wall-clock time (seconds since the epoch) after
# which the worker must decline it (scheduler/direct.py).
DIRECT_UNTIL_HEADER = "Llmserve-Direct-Until"


def attempt_key(request_id: str, attempt: int) -> str:
    """One attempt of one request: JetStream's de-duplication id for its job (a resubmitted request
    runs once, a migrated one runs again) and the worker's key for it (a migrated request may come
    back to a worker still running its old attempt)."""
    return request_id if attempt == 0 else f"{request_id}.{attempt}"


@dataclass(frozen=True)
class Subjects:
    prefix: str = "llm"

    def __post_init__(self) -> None:
        if not PREFIX_RE.match(self.prefix):
            raise ValueError(f"subject prefix must be letters, digits, '-' or '_', got {self.prefix!r}")

    # -- scheduler ----------------------------------------------------------------------------
    @property
    def submit(self) -> str:
        return f"{self.prefix}.sched.submit"

    @property
    def done(self) -> str:
        return f"{self.prefix}.sched.done"

    SCHEDULER_QUEUE_GROUP = "scheduler"

    # -- job queue ----------------------------------------------------------------------------
    @property
    def jobs_stream_prefix(self) -> str:
        return f"{self.prefix.upper().replace('-', '_')}_JOBS_"

    def jobs_stream(self, model: str) -> str:
        """The stream holding one model's queue (every version and priority)."""
        return f"{self.jobs_stream_prefix}{model}"

    def jobs_model(self, model: str) -> str:
        return f"{self.prefix}.jobs.{model}.>"

    def jobs_version(self, model: str, version: int) -> str:
        return f"{self.prefix}.jobs.{model}.{version}.*"

    def jobs(self, model: str, version: int, priority: int) -> str:
        return f"{self.prefix}.jobs.{model}.{version}.p{priority}"

    def jobs_consumer(self, model: str, version: int, priority: int) -> str:
        """Durable consumer shared by every worker of one model version and priority."""
        return f"{model}_v{version}_p{priority}"

    def jobs_for(self, model: str, version: int, priority: int, instance_id: str) -> str:
        """Jobs queued for one worker first (it holds the start of their prompts)."""
        return f"{self.jobs(model, version, priority)}.{instance_id}"

    def jobs_for_any(self, model: str, version: int) -> str:
        """Every worker's own subjects of one version."""
        return f"{self.prefix}.jobs.{model}.{version}.*.*"

    def jobs_version_all(self, model: str, version: int) -> str:
        """One version's jobs: the shared subjects and every worker's own."""
        return f"{self.prefix}.jobs.{model}.{version}.>"

    def jobs_for_consumer(self, model: str, version: int, priority: int, instance_id: str) -> str:
        """Durable consumer of one worker's own subject (any worker may pull it once it waited)."""
        return f"{self.jobs_consumer(model, version, priority)}_{instance_id}"

    def parse_jobs(self, subject: str) -> tuple[int, int, str] | None:
        """(version, priority, instance id or "") of a job subject; None for anything else."""
        parts = subject.split(".")
        if len(parts) not in (5, 6) or parts[0] != self.prefix or parts[1] != "jobs" or not parts[4].startswith("p"):
            return None
        try:
            return int(parts[3]), int(parts[4][1:]), parts[5] if len(parts) == 6 else ""
        except ValueError:
            return None

    def direct(self, model: str, version: int, instance_id: str) -> str:
        """A job handed to one worker directly (request/reply, DirectJobReply) while the queue has no
        stream leader (scheduler/direct.py)."""
        return f"{self.prefix}.direct.{model}.{version}.{instance_id}"

    def doorbell(self, model: str, version: int) -> str:
        return f"{self.prefix}.doorbell.{model}.{version}"

    def model_calls(self, model: str, version: int) -> str:
        """Tokenizer and metadata questions about one model version (request/reply, ModelCall)."""
        return f"{self.prefix}.model.{model}.{version}"

    # One worker of a version answers each model call.
    MODEL_CALLS_QUEUE_GROUP = "workers"

    # -- token path ---------------------------------------------------------------------------
    def tokens(self, request_id: str) -> str:
        return f"{self.prefix}.tokens.{request_id}"

    @property
    def attach(self) -> str:
        """Routers ask every worker who holds a request (AttachRequest), to re-attach a client to it."""
        return f"{self.prefix}.attach"

    def cancel(self, request_id: str) -> str:
        return f"{self.prefix}.cancel.{request_id}"

    @property
    def cancel_all(self) -> str:
        return f"{self.prefix}.cancel.*"

    # -- control plane ------------------------------------------------------------------------
    def heartbeat(self, kind: str, instance_id: str) -> str:
        return f"{self.prefix}.hb.{kind}.{instance_id}"

    @property
    def heartbeat_all(self) -> str:
        return f"{self.prefix}.hb.>"

    def event(self, what: str) -> str:
        return f"{self.prefix}.events.{what}"

    @property
    def registry_changes(self) -> str:
        return self.event("registry")

    @property
    def model_refused(self) -> str:
        return self.event("model_refused")

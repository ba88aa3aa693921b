from llmserve.v1 import common_pb2 as _common_pb2
from llmserve.v1 import inference_pb2 as _inference_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    ERROR_CODE_INVALID_ARGUMENT: _ClassVar[ErrorCode]
    ERROR_CODE_NOT_FOUND: _ClassVar[ErrorCode]
    ERROR_CODE_RESOURCE_EXHAUSTED: _ClassVar[ErrorCode]
    ERROR_CODE_UNAVAILABLE: _ClassVar[ErrorCode]
    ERROR_CODE_DEADLINE_EXCEEDED: _ClassVar[ErrorCode]
    ERROR_CODE_INTERNAL: _ClassVar[ErrorCode]
    ERROR_CODE_FAILED_PRECONDITION: _ClassVar[ErrorCode]
    ERROR_CODE_PERMISSION_DENIED: _ClassVar[ErrorCode]
    ERROR_CODE_UNAUTHENTICATED: _ClassVar[ErrorCode]

class InstanceKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INSTANCE_KIND_UNSPECIFIED: _ClassVar[InstanceKind]
    INSTANCE_KIND_ROUTER: _ClassVar[InstanceKind]
    INSTANCE_KIND_SCHEDULER: _ClassVar[InstanceKind]
    INSTANCE_KIND_WORKER: _ClassVar[InstanceKind]
    INSTANCE_KIND_REGISTRY: _ClassVar[InstanceKind]
    INSTANCE_KIND_MONITOR: _ClassVar[InstanceKind]

class RegistryAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REGISTRY_ACTION_UNSPECIFIED: _ClassVar[RegistryAction]
    REGISTRY_ACTION_PUBLISH: _ClassVar[RegistryAction]
    REGISTRY_ACTION_PROMOTE: _ClassVar[RegistryAction]
    REGISTRY_ACTION_ROLLBACK: _ClassVar[RegistryAction]
    REGISTRY_ACTION_CANARY: _ClassVar[RegistryAction]
    REGISTRY_ACTION_RETIRE: _ClassVar[RegistryAction]
    REGISTRY_ACTION_FALLBACK: _ClassVar[RegistryAction]
    REGISTRY_ACTION_IMPORT: _ClassVar[RegistryAction]
    REGISTRY_ACTION_KEY_CREATE: _ClassVar[RegistryAction]
    REGISTRY_ACTION_KEY_REVOKE: _ClassVar[RegistryAction]
    REGISTRY_ACTION_TENANT_LIMITS: _ClassVar[RegistryAction]
    REGISTRY_ACTION_REINIT: _ClassVar[RegistryAction]

class InstanceState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INSTANCE_STATE_UNSPECIFIED: _ClassVar[InstanceState]
    INSTANCE_STATE_UP: _ClassVar[InstanceState]
    INSTANCE_STATE_DEAD: _ClassVar[InstanceState]
ERROR_CODE_UNSPECIFIED: ErrorCode
ERROR_CODE_INVALID_ARGUMENT: ErrorCode
ERROR_CODE_NOT_FOUND: ErrorCode
ERROR_CODE_RESOURCE_EXHAUSTED: ErrorCode
ERROR_CODE_UNAVAILABLE: ErrorCode
ERROR_CODE_DEADLINE_EXCEEDED: ErrorCode
ERROR_CODE_INTERNAL: ErrorCode
ERROR_CODE_FAILED_PRECONDITION: ErrorCode
ERROR_CODE_PERMISSION_DENIED: ErrorCode
ERROR_CODE_UNAUTHENTICATED: ErrorCode
INSTANCE_KIND_UNSPECIFIED: InstanceKind
INSTANCE_KIND_ROUTER: InstanceKind
INSTANCE_KIND_SCHEDULER: InstanceKind
INSTANCE_KIND_WORKER: InstanceKind
INSTANCE_KIND_REGISTRY: InstanceKind
INSTANCE_KIND_MONITOR: InstanceKind
REGISTRY_ACTION_UNSPECIFIED: RegistryAction
REGISTRY_ACTION_PUBLISH: RegistryAction
REGISTRY_ACTION_PROMOTE: RegistryAction
REGISTRY_ACTION_ROLLBACK: RegistryAction
REGISTRY_ACTION_CANARY: RegistryAction
REGISTRY_ACTION_RETIRE: RegistryAction
REGISTRY_ACTION_FALLBACK: RegistryAction
REGISTRY_ACTION_IMPORT: RegistryAction
REGISTRY_ACTION_KEY_CREATE: RegistryAction
REGISTRY_ACTION_KEY_REVOKE: RegistryAction
REGISTRY_ACTION_TENANT_LIMITS: RegistryAction
REGISTRY_ACTION_REINIT: RegistryAction
INSTANCE_STATE_UNSPECIFIED: InstanceState
INSTANCE_STATE_UP: InstanceState
INSTANCE_STATE_DEAD: InstanceState

class Job(_message.Message):
    __slots__ = ("request_id", "model", "model_version", "model_alias", "prompt", "messages", "sampling", "priority", "reply_subject", "deadline", "submitted_at", "tenant", "attempt", "resume_token_ids", "resume_text_chars", "tools", "resume_chunks", "crashes")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_ALIAS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    REPLY_SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    RESUME_TEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    RESUME_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    CRASHES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    model_version: int
    model_alias: str
    prompt: str
    messages: JobMessages
    sampling: _common_pb2.SamplingParams
    priority: _common_pb2.Priority
    reply_subject: str
    deadline: float
    submitted_at: float
    tenant: str
    attempt: int
    resume_token_ids: _containers.RepeatedScalarFieldContainer[int]
    resume_text_chars: int
    tools: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tool]
    resume_chunks: int
    crashes: int
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., model_version: _Optional[int] = ..., model_alias: _Optional[str] = ..., prompt: _Optional[str] = ..., messages: _Optional[_Union[JobMessages, _Mapping]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., priority: _Optional[_Union[_common_pb2.Priority, str]] = ..., reply_subject: _Optional[str] = ..., deadline: _Optional[float] = ..., submitted_at: _Optional[float] = ..., tenant: _Optional[str] = ..., attempt: _Optional[int] = ..., resume_token_ids: _Optional[_Iterable[int]] = ..., resume_text_chars: _Optional[int] = ..., tools: _Optional[_Iterable[_Union[_common_pb2.Tool, _Mapping]]] = ..., resume_chunks: _Optional[int] = ..., crashes: _Optional[int] = ...) -> None: ...

class JobMessages(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("error_code", "error_message", "model_version", "retry_after_s", "model", "reason")
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    error_code: ErrorCode
    error_message: str
    model_version: int
    retry_after_s: float
    model: str
    reason: str
    def __init__(self, error_code: _Optional[_Union[ErrorCode, str]] = ..., error_message: _Optional[str] = ..., model_version: _Optional[int] = ..., retry_after_s: _Optional[float] = ..., model: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DirectJobReply(_message.Message):
    __slots__ = ("taken",)
    TAKEN_FIELD_NUMBER: _ClassVar[int]
    taken: bool
    def __init__(self, taken: _Optional[bool] = ...) -> None: ...

class JobDone(_message.Message):
    __slots__ = ("request_id", "tenant")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tenant: str
    def __init__(self, request_id: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class TokenChunk(_message.Message):
    __slots__ = ("request_id", "seq", "text", "token_ids", "final", "finish_reason", "usage", "error_code", "error_message", "worker_id", "model_version", "attempt", "handed_back", "logprobs", "on_trial", "index")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    HANDED_BACK_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    ON_TRIAL_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    seq: int
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    final: bool
    finish_reason: _common_pb2.FinishReason
    usage: _common_pb2.Usage
    error_code: ErrorCode
    error_message: str
    worker_id: str
    model_version: int
    attempt: int
    handed_back: bool
    logprobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenLogprob]
    on_trial: bool
    index: int
    def __init__(self, request_id: _Optional[str] = ..., seq: _Optional[int] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., final: _Optional[bool] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., error_code: _Optional[_Union[ErrorCode, str]] = ..., error_message: _Optional[str] = ..., worker_id: _Optional[str] = ..., model_version: _Optional[int] = ..., attempt: _Optional[int] = ..., handed_back: _Optional[bool] = ..., logprobs: _Optional[_Iterable[_Union[_common_pb2.TokenLogprob, _Mapping]]] = ..., on_trial: _Optional[bool] = ..., index: _Optional[int] = ...) -> None: ...

class AttachRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class AttachReply(_message.Message):
    __slots__ = ("job", "chunks")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    job: Job
    chunks: _containers.RepeatedCompositeFieldContainer[TokenChunk]
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., chunks: _Optional[_Iterable[_Union[TokenChunk, _Mapping]]] = ...) -> None: ...

class Cancel(_message.Message):
    __slots__ = ("request_id", "reason", "max_attempt")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    reason: str
    max_attempt: int
    def __init__(self, request_id: _Optional[str] = ..., reason: _Optional[str] = ..., max_attempt: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("instance_id", "kind", "sent_at", "interval_s", "ready", "model", "model_version", "slots_total", "slots_busy", "rss_bytes", "cpu_percent", "host", "gpu_utilization_percent", "gpu_memory_used_bytes", "gpu_memory_total_bytes", "requests_total", "requests_failed", "recent_ttft_p50_s", "queued_jobs", "draining_versions", "numerics", "generated_tokens_total", "model_loads", "prefix_keys")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SLOTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SLOTS_BUSY_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    GPU_UTILIZATION_PERCENT_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FAILED_FIELD_NUMBER: _ClassVar[int]
    RECENT_TTFT_P50_S_FIELD_NUMBER: _ClassVar[int]
    QUEUED_JOBS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NUMERICS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MODEL_LOADS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_KEYS_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    kind: InstanceKind
    sent_at: float
    interval_s: float
    ready: bool
    model: str
    model_version: int
    slots_total: int
    slots_busy: int
    rss_bytes: int
    cpu_percent: float
    host: str
    gpu_utilization_percent: float
    gpu_memory_used_bytes: int
    gpu_memory_total_bytes: int
    requests_total: int
    requests_failed: int
    recent_ttft_p50_s: float
    queued_jobs: int
    draining_versions: _containers.RepeatedScalarFieldContainer[int]
    numerics: str
    generated_tokens_total: int
    model_loads: _containers.RepeatedCompositeFieldContainer[ModelLoad]
    prefix_keys: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, instance_id: _Optional[str] = ..., kind: _Optional[_Union[InstanceKind, str]] = ..., sent_at: _Optional[float] = ..., interval_s: _Optional[float] = ..., ready: _Optional[bool] = ..., model: _Optional[str] = ..., model_version: _Optional[int] = ..., slots_total: _Optional[int] = ..., slots_busy: _Optional[int] = ..., rss_bytes: _Optional[int] = ..., cpu_percent: _Optional[float] = ..., host: _Optional[str] = ..., gpu_utilization_percent: _Optional[float] = ..., gpu_memory_used_bytes: _Optional[int] = ..., gpu_memory_total_bytes: _Optional[int] = ..., requests_total: _Optional[int] = ..., requests_failed: _Optional[int] = ..., recent_ttft_p50_s: _Optional[float] = ..., queued_jobs: _Optional[int] = ..., draining_versions: _Optional[_Iterable[int]] = ..., numerics: _Optional[str] = ..., generated_tokens_total: _Optional[int] = ..., model_loads: _Optional[_Iterable[_Union[ModelLoad, _Mapping]]] = ..., prefix_keys: _Optional[_Iterable[int]] = ...) -> None: ...

class ModelLoad(_message.Message):
    __slots__ = ("model", "ttft_bucket_bounds_s", "ttft_bucket_counts", "queued_jobs", "queue_drain_per_s")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TTFT_BUCKET_BOUNDS_S_FIELD_NUMBER: _ClassVar[int]
    TTFT_BUCKET_COUNTS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_JOBS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DRAIN_PER_S_FIELD_NUMBER: _ClassVar[int]
    model: str
    ttft_bucket_bounds_s: _containers.RepeatedScalarFieldContainer[float]
    ttft_bucket_counts: _containers.RepeatedScalarFieldContainer[int]
    queued_jobs: int
    queue_drain_per_s: float
    def __init__(self, model: _Optional[str] = ..., ttft_bucket_bounds_s: _Optional[_Iterable[float]] = ..., ttft_bucket_counts: _Optional[_Iterable[int]] = ..., queued_jobs: _Optional[int] = ..., queue_drain_per_s: _Optional[float] = ...) -> None: ...

class RegistryChange(_message.Message):
    __slots__ = ("model", "action", "version", "audit_id", "kind", "subject")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    model: str
    action: str
    version: int
    audit_id: str
    kind: RegistryAction
    subject: str
    def __init__(self, model: _Optional[str] = ..., action: _Optional[str] = ..., version: _Optional[int] = ..., audit_id: _Optional[str] = ..., kind: _Optional[_Union[RegistryAction, str]] = ..., subject: _Optional[str] = ...) -> None: ...

class ModelRefused(_message.Message):
    __slots__ = ("instance_id", "model", "version", "reason", "serving_version")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    model: str
    version: int
    reason: str
    serving_version: int
    def __init__(self, instance_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., reason: _Optional[str] = ..., serving_version: _Optional[int] = ...) -> None: ...

class InstanceEvent(_message.Message):
    __slots__ = ("instance_id", "kind", "state", "at", "model", "model_version", "instance_state")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_STATE_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    kind: InstanceKind
    state: str
    at: float
    model: str
    model_version: int
    instance_state: InstanceState
    def __init__(self, instance_id: _Optional[str] = ..., kind: _Optional[_Union[InstanceKind, str]] = ..., state: _Optional[str] = ..., at: _Optional[float] = ..., model: _Optional[str] = ..., model_version: _Optional[int] = ..., instance_state: _Optional[_Union[InstanceState, str]] = ...) -> None: ...

class ModelCall(_message.Message):
    __slots__ = ("tokenize", "detokenize", "info")
    TOKENIZE_FIELD_NUMBER: _ClassVar[int]
    DETOKENIZE_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    tokenize: _inference_pb2.TokenizeRequest
    detokenize: _inference_pb2.DetokenizeRequest
    info: _inference_pb2.GetModelInfoRequest
    def __init__(self, tokenize: _Optional[_Union[_inference_pb2.TokenizeRequest, _Mapping]] = ..., detokenize: _Optional[_Union[_inference_pb2.DetokenizeRequest, _Mapping]] = ..., info: _Optional[_Union[_inference_pb2.GetModelInfoRequest, _Mapping]] = ...) -> None: ...

class ModelCallReply(_message.Message):
    __slots__ = ("tokenize", "detokenize", "info", "error_code", "error_message")
    TOKENIZE_FIELD_NUMBER: _ClassVar[int]
    DETOKENIZE_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    tokenize: _inference_pb2.TokenizeResponse
    detokenize: _inference_pb2.DetokenizeResponse
    info: _inference_pb2.ModelDetails
    error_code: ErrorCode
    error_message: str
    def __init__(self, tokenize: _Optional[_Union[_inference_pb2.TokenizeResponse, _Mapping]] = ..., detokenize: _Optional[_Union[_inference_pb2.DetokenizeResponse, _Mapping]] = ..., info: _Optional[_Union[_inference_pb2.ModelDetails, _Mapping]] = ..., error_code: _Optional[_Union[ErrorCode, str]] = ..., error_message: _Optional[str] = ...) -> None: ...

from llmserve.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KeyRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_ROLE_UNSPECIFIED: _ClassVar[KeyRole]
    KEY_ROLE_INFERENCE: _ClassVar[KeyRole]
    KEY_ROLE_ADMIN: _ClassVar[KeyRole]
KEY_ROLE_UNSPECIFIED: KeyRole
KEY_ROLE_INFERENCE: KeyRole
KEY_ROLE_ADMIN: KeyRole

class ModelVersion(_message.Message):
    __slots__ = ("name", "version", "path", "sha256", "source", "created_at", "aliases", "canary_weight", "retired")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    CANARY_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    RETIRED_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    path: str
    sha256: str
    source: str
    created_at: float
    aliases: _containers.RepeatedScalarFieldContainer[str]
    canary_weight: int
    retired: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., path: _Optional[str] = ..., sha256: _Optional[str] = ..., source: _Optional[str] = ..., created_at: _Optional[float] = ..., aliases: _Optional[_Iterable[str]] = ..., canary_weight: _Optional[int] = ..., retired: _Optional[bool] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions", "fallbacks")
    class FallbacksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    fallbacks: _containers.ScalarMap[str, str]
    def __init__(self, versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., fallbacks: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetVersionRequest(_message.Message):
    __slots__ = ("name", "version", "alias")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    alias: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., alias: _Optional[str] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("name", "directory", "gguf_file", "packaged_default", "make_stable", "actor", "move")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    GGUF_FILE_FIELD_NUMBER: _ClassVar[int]
    PACKAGED_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    MAKE_STABLE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    MOVE_FIELD_NUMBER: _ClassVar[int]
    name: str
    directory: str
    gguf_file: str
    packaged_default: bool
    make_stable: bool
    actor: str
    move: bool
    def __init__(self, name: _Optional[str] = ..., directory: _Optional[str] = ..., gguf_file: _Optional[str] = ..., packaged_default: _Optional[bool] = ..., make_stable: _Optional[bool] = ..., actor: _Optional[str] = ..., move: _Optional[bool] = ...) -> None: ...

class PublishProgress(_message.Message):
    __slots__ = ("stage", "version")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    stage: PublishStage
    version: ModelVersion
    def __init__(self, stage: _Optional[_Union[PublishStage, _Mapping]] = ..., version: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class PublishStage(_message.Message):
    __slots__ = ("name", "done_bytes", "total_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DONE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    done_bytes: int
    total_bytes: int
    def __init__(self, name: _Optional[str] = ..., done_bytes: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("name", "version", "actor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    actor: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., actor: _Optional[str] = ...) -> None: ...

class SetCanaryRequest(_message.Message):
    __slots__ = ("name", "version", "weight", "actor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    weight: int
    actor: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., weight: _Optional[int] = ..., actor: _Optional[str] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("name", "actor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    actor: str
    def __init__(self, name: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class RetireRequest(_message.Message):
    __slots__ = ("name", "version", "actor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    actor: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., actor: _Optional[str] = ...) -> None: ...

class SetFallbackRequest(_message.Message):
    __slots__ = ("name", "fallback", "actor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    fallback: str
    actor: str
    def __init__(self, name: _Optional[str] = ..., fallback: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class ReinitRequest(_message.Message):
    __slots__ = ("actor",)
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    actor: str
    def __init__(self, actor: _Optional[str] = ...) -> None: ...

class ReinitResponse(_message.Message):
    __slots__ = ("registry_id", "last_versions")
    class LastVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    REGISTRY_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    registry_id: str
    last_versions: _containers.ScalarMap[str, int]
    def __init__(self, registry_id: _Optional[str] = ..., last_versions: _Optional[_Mapping[str, int]] = ...) -> None: ...

class TenantLimits(_message.Message):
    __slots__ = ("tenant", "max_active", "max_priority")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MAX_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    MAX_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    max_active: int
    max_priority: _common_pb2.Priority
    def __init__(self, tenant: _Optional[str] = ..., max_active: _Optional[int] = ..., max_priority: _Optional[_Union[_common_pb2.Priority, str]] = ...) -> None: ...

class SetTenantLimitsRequest(_message.Message):
    __slots__ = ("limits", "actor")
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    limits: TenantLimits
    actor: str
    def __init__(self, limits: _Optional[_Union[TenantLimits, _Mapping]] = ..., actor: _Optional[str] = ...) -> None: ...

class ListTenantsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTenantsResponse(_message.Message):
    __slots__ = ("tenants",)
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[TenantLimits]
    def __init__(self, tenants: _Optional[_Iterable[_Union[TenantLimits, _Mapping]]] = ...) -> None: ...

class ApiKey(_message.Message):
    __slots__ = ("id", "name", "tenant", "role", "max_priority", "requests_per_minute", "tokens_per_minute", "created_at", "expires_at", "revoked_at", "created_by")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MAX_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    tenant: str
    role: KeyRole
    max_priority: _common_pb2.Priority
    requests_per_minute: int
    tokens_per_minute: int
    created_at: float
    expires_at: float
    revoked_at: float
    created_by: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., tenant: _Optional[str] = ..., role: _Optional[_Union[KeyRole, str]] = ..., max_priority: _Optional[_Union[_common_pb2.Priority, str]] = ..., requests_per_minute: _Optional[int] = ..., tokens_per_minute: _Optional[int] = ..., created_at: _Optional[float] = ..., expires_at: _Optional[float] = ..., revoked_at: _Optional[float] = ..., created_by: _Optional[str] = ...) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("name", "tenant", "role", "max_priority", "requests_per_minute", "tokens_per_minute", "expires_in_s", "actor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MAX_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_S_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    tenant: str
    role: KeyRole
    max_priority: _common_pb2.Priority
    requests_per_minute: int
    tokens_per_minute: int
    expires_in_s: float
    actor: str
    def __init__(self, name: _Optional[str] = ..., tenant: _Optional[str] = ..., role: _Optional[_Union[KeyRole, str]] = ..., max_priority: _Optional[_Union[_common_pb2.Priority, str]] = ..., requests_per_minute: _Optional[int] = ..., tokens_per_minute: _Optional[int] = ..., expires_in_s: _Optional[float] = ..., actor: _Optional[str] = ...) -> None: ...

class CreateKeyResponse(_message.Message):
    __slots__ = ("key", "secret")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    key: ApiKey
    secret: str
    def __init__(self, key: _Optional[_Union[ApiKey, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ("include_inactive",)
    INCLUDE_INACTIVE_FIELD_NUMBER: _ClassVar[int]
    include_inactive: bool
    def __init__(self, include_inactive: _Optional[bool] = ...) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[ApiKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ...) -> None: ...

class RevokeKeyRequest(_message.Message):
    __slots__ = ("id", "actor")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    id: str
    actor: str
    def __init__(self, id: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class AliasChange(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: AuditEntry
    def __init__(self, entry: _Optional[_Union[AuditEntry, _Mapping]] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("id", "action", "model", "version", "previous", "weight", "actor", "at", "subject")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    id: str
    action: str
    model: str
    version: int
    previous: int
    weight: int
    actor: str
    at: float
    subject: str
    def __init__(self, id: _Optional[str] = ..., action: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., previous: _Optional[int] = ..., weight: _Optional[int] = ..., actor: _Optional[str] = ..., at: _Optional[float] = ..., subject: _Optional[str] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("name", "limit")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    name: str
    limit: int
    def __init__(self, name: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...

class ExportRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RegistrySnapshot(_message.Message):
    __slots__ = ("registry_id", "models", "exported_at")
    REGISTRY_ID_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    EXPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    registry_id: str
    models: _containers.RepeatedCompositeFieldContainer[ModelRecords]
    exported_at: float
    def __init__(self, registry_id: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelRecords, _Mapping]]] = ..., exported_at: _Optional[float] = ...) -> None: ...

class ModelRecords(_message.Message):
    __slots__ = ("name", "last_version", "versions", "stable", "canary", "canary_weight", "stable_history", "fallback")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LAST_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    CANARY_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    STABLE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    name: str
    last_version: int
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    stable: int
    canary: int
    canary_weight: int
    stable_history: _containers.RepeatedScalarFieldContainer[int]
    fallback: str
    def __init__(self, name: _Optional[str] = ..., last_version: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., stable: _Optional[int] = ..., canary: _Optional[int] = ..., canary_weight: _Optional[int] = ..., stable_history: _Optional[_Iterable[int]] = ..., fallback: _Optional[str] = ...) -> None: ...

class ImportResponse(_message.Message):
    __slots__ = ("models", "versions")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    models: int
    versions: int
    def __init__(self, models: _Optional[int] = ..., versions: _Optional[int] = ...) -> None: ...

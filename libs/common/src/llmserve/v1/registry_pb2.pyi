from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

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
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    def __init__(self, versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ...) -> None: ...

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
    __slots__ = ("name", "directory", "gguf_file", "packaged_default", "make_stable", "actor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    GGUF_FILE_FIELD_NUMBER: _ClassVar[int]
    PACKAGED_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    MAKE_STABLE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    directory: str
    gguf_file: str
    packaged_default: bool
    make_stable: bool
    actor: str
    def __init__(self, name: _Optional[str] = ..., directory: _Optional[str] = ..., gguf_file: _Optional[str] = ..., packaged_default: _Optional[bool] = ..., make_stable: _Optional[bool] = ..., actor: _Optional[str] = ...) -> None: ...

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

class AliasChange(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: AuditEntry
    def __init__(self, entry: _Optional[_Union[AuditEntry, _Mapping]] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("id", "action", "model", "version", "previous", "weight", "actor", "at")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    action: str
    model: str
    version: int
    previous: int
    weight: int
    actor: str
    at: float
    def __init__(self, id: _Optional[str] = ..., action: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., previous: _Optional[int] = ..., weight: _Optional[int] = ..., actor: _Optional[str] = ..., at: _Optional[float] = ...) -> None: ...

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

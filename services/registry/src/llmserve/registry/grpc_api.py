"""The gRPC Registry service: reads of the model records (changes arrive with the registry issue)."""

from __future__ import annotations

import grpc
from prometheus_client import Counter

from llmserve.common.catalog import ModelCatalog
from llmserve.common.errors import ServiceError
from llmserve.v1 import registry_pb2, registry_pb2_grpc

LOOKUPS = Counter("llmserve_registry_lookups_total", "Registry reads served over gRPC, by method.", ["method"])


class RegistryServicer(registry_pb2_grpc.RegistryServicer):
    def __init__(self, catalog: ModelCatalog) -> None:
        self._catalog = catalog

    async def ListVersions(
        self, request: registry_pb2.ListVersionsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListVersionsResponse:
        LOOKUPS.labels(method="ListVersions").inc()
        return registry_pb2.ListVersionsResponse(versions=await self._catalog.list_versions(request.name))

    async def GetVersion(
        self, request: registry_pb2.GetVersionRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ModelVersion:
        LOOKUPS.labels(method="GetVersion").inc()
        if not request.name:
            raise ServiceError.invalid("name is required")
        if request.WhichOneof("selector") == "version":
            return await self._catalog.get(request.name, request.version)
        return await self._catalog.get_by_alias(request.name, request.alias or "stable")

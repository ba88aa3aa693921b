"""Every Redis key llmserve uses. No other module builds keys.

Layout (prefix "llm:" by default):
  llm:models                           SET    model names
  llm:model:<name>:versions            ZSET   version numbers (score = version)
  llm:model:<name>:v:<version>         HASH   one ModelVersion (path, sha256, source, created_at)
  llm:model:<name>:aliases             HASH   alias -> version ("stable", "canary")
  llm:model:<name>:weights             HASH   alias -> traffic weight in percent ("canary")
  llm:model:<name>:stable_history      LIST   earlier stable versions, newest first (for rollback)
  llm:model:<name>:next_version        STRING counter of the last version number handed out
  llm:model:<name>:fallback            STRING model served instead while <name> has no live worker
  llm:audit                            STREAM every registry change (who, what, when)
  llm:registry:id                      STRING identity of this registry (see llmserve.registry.guard)
  llm:tenant:<tenant>:active           ZSET   request ids a tenant has queued or running (score = lease end)
  llm:tenant:<tenant>:limits           HASH   max_active, max_priority overrides for one tenant
  llm:tenants                          SET    tenants with overrides
  llm:request:<id>:done                STRING a request that ended recently (expires after the duplicate window)
  llm:apikey:<id>                      HASH   one API key: sha256 of its secret, tenant, role, limits (never the secret)
  llm:apikeys                          ZSET   API key ids (score = creation time)
  llm:ratelimit:<key id>:<limit>       STRING a key's rate-limit state ("requests" or "tokens"; see llmserve.common.rate_limits)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Tenant names become key parts: no spaces, colons or braces.
TENANT_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


@dataclass(frozen=True)
class RedisKeys:
    prefix: str = "llm:"

    @property
    def models(self) -> str:
        return f"{self.prefix}models"

    def versions(self, name: str) -> str:
        return f"{self.prefix}model:{name}:versions"

    def version(self, name: str, version: int) -> str:
        return f"{self.version_prefix(name)}{version}"

    def version_prefix(self, name: str) -> str:
        """What version() puts before the number, for Lua scripts that build the key themselves."""
        return f"{self.prefix}model:{name}:v:"

    def aliases(self, name: str) -> str:
        return f"{self.prefix}model:{name}:aliases"

    def weights(self, name: str) -> str:
        return f"{self.prefix}model:{name}:weights"

    def stable_history(self, name: str) -> str:
        return f"{self.prefix}model:{name}:stable_history"

    def version_counter(self, name: str) -> str:
        return f"{self.prefix}model:{name}:next_version"

    def fallback(self, name: str) -> str:
        return f"{self.prefix}model:{name}:fallback"

    @property
    def audit(self) -> str:
        return f"{self.prefix}audit"

    @property
    def registry_id(self) -> str:
        return f"{self.prefix}registry:id"

    def tenant_active(self, tenant: str) -> str:
        return f"{self.prefix}tenant:{tenant}:active"

    def tenant_limits(self, tenant: str) -> str:
        return f"{self.prefix}tenant:{tenant}:limits"

    def request_done(self, request_id: str) -> str:
        return f"{self.prefix}request:{request_id}:done"

    def handed_directly(self, attempt_key: str) -> str:
        """Set when a scheduler handed this attempt to a worker outside the queue (scheduler/direct.py)."""
        return f"{self.prefix}direct:{attempt_key}"

    @property
    def tenants(self) -> str:
        return f"{self.prefix}tenants"

    def api_key(self, key_id: str) -> str:
        return f"{self.prefix}apikey:{key_id}"

    @property
    def api_keys(self) -> str:
        return f"{self.prefix}apikeys"

    def rate_limit(self, key_id: str, limit: str) -> str:
        return f"{self.prefix}ratelimit:{key_id}:{limit}"

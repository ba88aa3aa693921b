"""Every Redis key llmserve uses. No other module builds keys.

Layout (prefix "llm:" by default):
  llm:models                           SET    model names
  llm:model:<name>:versions            ZSET   version numbers (score = version)
  llm:model:<name>:v:<version>         HASH   one ModelVersion (path, sha256, source, created_at)
  llm:model:<name>:aliases             HASH   alias -> version
  llm:model:<name>:next_version        STRING counter of the last version number handed out
  llm:model:<name>:fallback            STRING model served instead while <name> has no live worker
  llm:audit                            STREAM every registry change (who, what, when)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    prefix: str = "llm:"

    @property
    def models(self) -> str:
        return f"{self.prefix}models"

    def versions(self, name: str) -> str:
        return f"{self.prefix}model:{name}:versions"

    def version(self, name: str, version: int) -> str:
        return f"{self.prefix}model:{name}:v:{version}"

    def aliases(self, name: str) -> str:
        return f"{self.prefix}model:{name}:aliases"

    def version_counter(self, name: str) -> str:
        return f"{self.prefix}model:{name}:next_version"

    def fallback(self, name: str) -> str:
        return f"{self.prefix}model:{name}:fallback"

    @property
    def audit(self) -> str:
        return f"{self.prefix}audit"

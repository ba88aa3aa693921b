"""How the CLI reaches the Registry service (its address) and carries the caller's API key.

The registry is the only writer of registry records; every `models`, `tenants` and `keys` command
is a call to it. The key comes from LLMSERVE_API_KEY or the file LLMSERVE_API_KEY_FILE names (or
--api-key-file); with auth off none is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from llmserve.common.errors import ServiceError
from llmserve.common.registry_client import RegistryClient

# The audit's actor when auth is off (with auth on it is the key's name).
ACTOR = "cli"


def add_access_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        default=os.environ.get("LLMSERVE_REGISTRY_ADDR", "127.0.0.1:50052"),
        help="gRPC address of the Registry service (default %(default)s, or LLMSERVE_REGISTRY_ADDR)",
    )
    parser.add_argument("--api-key-file", type=Path, default=None, help="file holding an admin API key (or set LLMSERVE_API_KEY)")


def api_key(key_file: Path | None) -> str:
    key_file = key_file or (Path(os.environ["LLMSERVE_API_KEY_FILE"]) if os.environ.get("LLMSERVE_API_KEY_FILE") else None)
    if key_file is not None:
        return key_file.read_text().strip()
    return os.environ.get("LLMSERVE_API_KEY", "").strip()


def key_metadata() -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying the CLI's key, for calls to the router (chat, models list)."""
    key = api_key(None)
    return (("authorization", f"Bearer {key}"),) if key else ()


@contextlib.asynccontextmanager
async def registry_client(args: argparse.Namespace) -> AsyncIterator[RegistryClient]:
    client = RegistryClient.with_key(args.registry, api_key(args.api_key_file))
    try:
        yield client
    finally:
        await client.close()


def run_command(command: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace) -> int:
    """Runs one async command; a refusal by the registry is printed as one line, exit code 1."""
    try:
        return asyncio.run(command(args))
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except (FileNotFoundError, NotADirectoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

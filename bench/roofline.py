"""This machine's memory bandwidth and matmul rate, and the decode roofline they imply for a model."""

from __future__ import annotations

import time

import torch


def memory_bandwidth_gbs(mb: int = 256, repeats: int = 5) -> float:
    """Bytes read + written per second by a large tensor copy."""
    src = torch.ones(mb * 2**20 // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best / 1e9


def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def decode_roofline(params: int, bytes_per_param: int, batch: int, bandwidth_gbs: float, gflops: float) -> float:
    """Upper bound on generated tokens/s: a decode step reads every weight once and does 2 FLOPs per weight per row."""
    memory_s = params * bytes_per_param / (bandwidth_gbs * 1e9)
    compute_s = 2 * params * batch / (gflops * 1e9)
    return batch / max(memory_s, compute_s)

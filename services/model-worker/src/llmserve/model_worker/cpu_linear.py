"""Linear layers on the CPU through oneDNN, with each weight reordered once into oneDNN's blocked layout.

A decoder's time on the CPU is nearly all matrix multiplications with a few rows (the sequences of a
decode step) against large weights. `torch.nn.Linear` hands them to MKL's sgemm with the weight as a
transposed operand, re-read in its plain layout at every call; oneDNN's matmul on a weight reordered
ahead of time (the path torch's own compiler takes for frozen CPU models) does the same products in
40-80 % of the time on a 2-core AVX2 machine, at every batch size measured from 1 to 700 rows. The results
differ from MKL's in the last bits only, as any other kernel's would.

`pack_linears` replaces a model's `nn.Linear` modules, in place or in a copy that shares every other
parameter with the original. Where oneDNN is unavailable it leaves the model as it is.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import structlog
import torch
from torch import nn

log = structlog.get_logger()

# The batch size oneDNN tunes the reordered layout for: a typical decode batch. Any other number of
# rows works with the same layout (measured faster than nn.Linear from 1 to 700 rows).
_ROWS_HINT = 16


class OneDnnLinear(nn.Module):
    """y = x W^T + b with W held in oneDNN's layout; inference only."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight = linear.weight.detach()
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(weight, _ROWS_HINT), persistent=False)
        bias = linear.bias.detach() if linear.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [None], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def supported(model: Any) -> str | None:
    """Why the model's linears cannot go through oneDNN, or None when they can."""
    param = next(model.parameters(), None)
    if param is None or param.device.type != "cpu":
        return "the model is not on the CPU"
    if param.dtype != torch.float32:
        return f"oneDNN reordering is used for float32 only, the model is {param.dtype}"
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return "this torch build has no oneDNN linear"
    return None


def pack_linears(model: Any, in_place: bool = False) -> Any:
    """`model` with every nn.Linear on oneDNN; `model` itself when that is not possible (with the
    reason logged).

    in_place replaces the layers of `model` itself, one at a time, so each plain weight is freed as
    soon as its reordered copy exists (what a worker wants); otherwise a copy of the module tree is
    changed, sharing every other parameter with `model`, which stays as transformers built it."""
    reason = supported(model)
    if reason is not None:
        log.info("cpu_linear_unchanged", reason=reason)
        return model
    if in_place:
        packed = model
    else:
        # Copy the module tree, not the tensors: the copy shares every parameter and buffer.
        shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
        packed = copy.deepcopy(model, memo=shared)
    count = 0
    try:
        with torch.no_grad():
            for module in list(packed.modules()):
                for name, child in list(module.named_children()):
                    if type(child) is nn.Linear:
                        setattr(module, name, OneDnnLinear(child))
                        count += 1
        if in_place:
            # Weights loaded from safetensors are views of one memory-mapped file, which stays mapped
            # (and resident) while any tensor views it: the parameters left (embeddings, norms) get
            # memory of their own, so the plain copies of the linear weights really go.
            for param in packed.parameters():
                param.data = param.data.clone()
    except RuntimeError as exc:  # a oneDNN that cannot reorder on this CPU: keep transformers' layers
        # In place, the layers replaced before the failure stay replaced; they compute the same thing.
        log.warning("cpu_linear_unchanged", reason=f"oneDNN reorder failed: {exc}", layers_replaced=count if in_place else 0)
        return model
    log.info("cpu_linear_onednn", layers=count)
    return packed

"""`Linear`: nn.Linear whose fp32 CPU product, forward and backward, runs on oneDNN where PyTorch has it, and
`preferred_library`: which of oneDNN and MKL `training.onednn_linear: auto` takes on a CPU.

PyTorch sends fp32 products on the CPU to MKL's sgemm, which on AMD CPUs runs its AVX2 code: half of what
AVX-512 gives (docs/CONFIG.md, "Speed options"). The models build their transformer blocks from this
`Linear`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn import functional as F


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


ONEDNN = _onednn_available()
ONEDNN_KEY = "onednn_linear"  # the checkpoint's record: True where the run's products ran on oneDNN
PRODUCTS_KEY = "products"  # the checkpoint's record of the library by name, as the report shows it
CPUINFO = Path("/proc/cpuinfo")
INTEL = "GenuineIntel"


@dataclass(frozen=True)
class Cpu:
    """What /proc/cpuinfo says of the first processor: `vendor_id` and `flags` (empty where it has none)."""
    vendor: str
    flags: frozenset[str]


def read_cpu(cpuinfo: str | None = None) -> Cpu | None:
    """The CPU from /proc/cpuinfo (or its text); None where there is no such file or it names no flags."""
    try:
        text = CPUINFO.read_text() if cpuinfo is None else cpuinfo
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor is enough: every core of a machine reports the same set
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    if "flags" not in fields:
        return None
    return Cpu(fields.get("vendor_id", ""), frozenset(fields["flags"].split()))


def preferred_library(cpu: Cpu | None) -> tuple[bool, str]:
    """(oneDNN?, why) for `training.onednn_linear: auto`: a function of the CPU alone, never of a timing, so that
    every trial on one CPU type trains on the same kernels and rounds alike (benchmarks/RESULTS.md, "Which
    library `auto` takes").

    oneDNN only where MKL's sgemm runs below the CPU's vector width: a non-Intel CPU with AVX-512, where MKL
    takes its AVX2 code. Elsewhere MKL: on AVX2-only CPUs it was as fast or faster, and on Intel it runs its own
    AVX-512 code.
    """
    if cpu is None:
        return False, "MKL (no CPU flags in /proc/cpuinfo to choose by)"
    if "avx512f" not in cpu.flags:
        return False, "MKL (no AVX-512 on this CPU)"
    if cpu.vendor == INTEL:
        return False, "MKL (an Intel CPU with AVX-512, which MKL uses)"
    vendor = {"AuthenticAMD": "an AMD", "": "a non-Intel"}.get(cpu.vendor, f"a {cpu.vendor}")
    return True, f"oneDNN (AVX-512 on {vendor} CPU, where MKL runs only its AVX2 code)"


def library_name(onednn: bool, device: torch.device) -> str:
    """The products' library as a run records it: `oneDNN`, `MKL`, or off the CPU the device's type (`cuda`)."""
    if device.type != "cpu":
        return device.type
    return "oneDNN" if onednn and ONEDNN else "MKL"


def recorded_library(checkpoint: dict | None) -> str:
    """The library a checkpoint's run computed its products with; `unknown` for a run from before the record."""
    if not checkpoint:
        return "unknown"
    if isinstance(checkpoint.get(PRODUCTS_KEY), str):
        return checkpoint[PRODUCTS_KEY]
    onednn = checkpoint.get(ONEDNN_KEY)
    # runs from before the name was recorded kept only this flag (False on CUDA too, which is rare there)
    return ("oneDNN" if onednn else "MKL") if isinstance(onednn, bool) else "unknown"


def _onednn_mm(a, b_t, bias=None):
    """a @ b_t.T (+ bias) by oneDNN's fp32 GEMM, for 2-d a and b_t."""
    return torch.ops.mkldnn._linear_pointwise(a, b_t, bias, "none", [], "")


def _onednn_linear(x, weight, bias):
    # [..., K] -> [M, K] @ [N, K]^T -> [M, N] -> [..., N]
    return _onednn_mm(x.reshape(-1, x.size(-1)), weight, bias).view(*x.shape[:-1], weight.size(0))


class _OneDnnLinear(torch.autograd.Function):
    """x W^T + b, forward and backward, on oneDNN."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad2 = grad.reshape(-1, grad.size(-1))  # [..., N] -> [M, N]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn_mm(grad2, weight.t().contiguous()).view(x.shape)  # [M, N] @ [N, K] -> [..., K]
        if ctx.needs_input_grad[1]:
            # dW^T = X^T dY, [K, M] @ [M, N]: oneDNN reorders its second operand anyway, so only the
            # smaller X^T is made contiguous (measured fastest of the four layouts)
            grad_w = _onednn_mm(x.reshape(-1, x.size(-1)).t().contiguous(), grad2.t()).t()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad2.sum(0)
        return grad_x, grad_w, grad_b


class Linear(nn.Linear):
    """nn.Linear (same parameters, same names) whose fp32 CPU product runs on oneDNN where it is built in.

    The product is the same fp32 arithmetic summed in another order: results agree to rounding, and a run
    is as deterministic as with MKL. Autocast, other dtypes, other devices and torch.compile tracing take
    the usual F.linear; `model.use_onednn(False)` (`training.onednn_linear: false`) always does.
    """

    onednn = ONEDNN

    def forward(self, x):
        if (self.onednn and x.device.type == "cpu" and x.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()):
            if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
                return _OneDnnLinear.apply(x, self.weight, self.bias)
            return _onednn_linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)

"""`Linear`: nn.Linear whose fp32 CPU product, forward and backward, runs on oneDNN where PyTorch has it.

PyTorch sends fp32 products on the CPU to MKL's sgemm, which on AMD CPUs runs its AVX2 code: half of what
AVX-512 gives (docs/CONFIG.md, "Speed options"). The models build their transformer blocks from this
`Linear`.
"""
import torch
import torch.nn as nn
from torch.nn import functional as F


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


ONEDNN = _onednn_available()


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

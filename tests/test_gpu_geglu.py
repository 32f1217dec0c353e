"""predlab.gpu_geglu's fused Triton GEGLU computes gelu_tanh(g) * u and its gradients.

On a machine without a GPU it runs under Triton's interpreter (in a subprocess, as in
test_gpu_attention.py); tests/test_gpu.py runs it on CUDA.
"""
from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from test_gpu_attention import _run

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton")

# (leading shape, dtype): one row (the [CLS]-only block), 33 rows (3,168 elements: three of the
# kernel's 1,024-element blocks and part of a fourth), a batch of tokens, bf16 inputs
CASES = [([1, 1], "float32"), ([33], "float32"), ([6, 29], "float32"), ([4, 19], "bfloat16")]

CHECK = r"""
import json, sys, torch
import torch.nn.functional as F
from predlab.gpu_geglu import geglu
device = sys.argv[1]
out = []
for lead, dtype in json.loads(sys.argv[2]):
    g = torch.Generator().manual_seed(sum(lead))
    h = torch.randn(*lead, 192, generator=g) * 3
    h.view(-1, 192)[0, :4] = torch.tensor([-60.0, 60.0, 0.0, -9.0])   # exp's clamp, both tails, zero
    dy = torch.randn(*lead, 96, generator=g)
    x = h.to(device, getattr(torch, dtype)).requires_grad_(True)
    y = geglu(x)
    (dx,) = torch.autograd.grad(y, x, dy.to(device, y.dtype))
    ref = h.double().requires_grad_(True)                            # the maths, in float64
    yr = F.gelu(ref[..., :96], approximate="tanh") * ref[..., 96:]
    (dr,) = torch.autograd.grad(yr, ref, dy.double())
    err = max(((a.double().cpu() - b).abs().max() / b.abs().max()).item() for a, b in ((y, yr), (dx, dr)))
    out.append({"case": [lead, dtype], "rel_err": err, "finite": bool(torch.isfinite(dx).all()),
                "dtype": str(y.dtype).split(".")[-1], "shape": list(y.shape)})
print(json.dumps(out))
"""


def run_check(device: str, cases=CASES, interpret: bool = True):
    return json.loads(_run(CHECK, device, json.dumps(cases), interpret=interpret))


def check(results) -> None:
    """Outputs and gradients within float32 rounding of the float64 maths (bf16's for bf16
    inputs), finite at the exp's clamp, in the input's dtype and shape."""
    for r in results:
        lead, dtype = r["case"]
        assert r["rel_err"] < (1e-2 if dtype == "bfloat16" else 1e-6), r
        assert r["finite"] and r["dtype"] == dtype and r["shape"] == lead + [96], r


def test_fused_geglu_matches_the_maths_under_the_interpreter():
    check(run_check("cpu"))


FAR = r"""
import json, sys, torch
import torch.nn.functional as F
from predlab.gpu_geglu import geglu
h = torch.tensor([[-1e6, -30.0, -12.0, 3e38, 1e36, 1e30]], device=sys.argv[1], requires_grad=True)
y = geglu(h)
(dh,) = torch.autograd.grad(y, h, torch.ones_like(y))
t = h.detach().clone().requires_grad_(True)
yt = F.gelu(t[:, :3], approximate="tanh") * t[:, 3:]
(dt,) = torch.autograd.grad(yt, t, torch.ones_like(yt))
print(json.dumps({"y": torch.equal(y, yt), "dh": torch.equal(dh, dt), "got": y.tolist()}))
"""


def far_gates_check(device: str, interpret: bool = True) -> None:
    """A gate far below zero: gelu is 0 there, as in torch, the page and predlab.fastops' kernel. exp's clamp
    left the sigmoid at 6e-39, which an up of 3e38 made -1.8e6."""
    r = json.loads(_run(FAR, device, interpret=interpret))
    assert r["y"] and r["dh"], r


def test_fused_geglu_of_a_gate_far_below_zero_is_zero_under_the_interpreter():
    far_gates_check("cpu")


def test_fused_geglu_refuses_cpu_tensors_without_the_interpreter():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this process runs Triton's interpreter")
    from predlab.gpu_geglu import geglu
    with pytest.raises(ValueError, match="CUDA tensors"):
        geglu(torch.randn(3, 192))


SECOND_ORDER = r"""
import json, sys, torch
import torch.nn.functional as F
from predlab import model as M
from predlab.gpu_attention import attention as fused_attention
from predlab.gpu_geglu import geglu as fused_geglu
out = {}
for name, fused, plain, width in (
        ("attention", lambda x: fused_attention(x, bias, 4), lambda x: M.attention(x, bias, 4, kernel="math"), 144),
        ("geglu", fused_geglu, lambda x: F.gelu(x[..., :96], approximate="tanh") * x[..., 96:], 192)):
    g = torch.Generator().manual_seed(3)
    h = torch.randn(2, 7, width, generator=g)
    bias = torch.zeros(2, 1, 1, 7)
    bias[1, ..., 5:] = M.MASKED
    res = []
    for f in (fused, plain):
        for strided in (False, True):         # a transposed view too: what the Function saves must be on the graph
            x = (h.transpose(0, 1).contiguous().transpose(0, 1) if strided else h.clone()).requires_grad_(True)
            (gx,) = torch.autograd.grad((f(x) ** 2).sum() + (x ** 3).sum(), x, create_graph=True)
            (gxx,) = torch.autograd.grad(gx.pow(2).sum(), x)
            res.append(gxx)
    out[name] = max(((a - res[2]).abs().max() / res[2].abs().max()).item() for a in res)
print(json.dumps(out))
"""


def test_fused_kernels_give_second_derivatives_of_torchs_ops_under_the_interpreter():
    """A gradient of the gradient (create_graph=True, a gradient penalty) through the Triton kernels: their
    backwards' results carried no graph, so the attention's term was left out of it without a word (6,966
    for 7,917) and GEGLU's failed in torch's "element 0 of tensors does not require grad"."""
    errors = json.loads(_run(SECOND_ORDER))
    assert errors["attention"] < 1e-5 and errors["geglu"] < 1e-5, errors

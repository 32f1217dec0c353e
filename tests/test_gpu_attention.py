"""predlab.gpu_attention's fused Triton kernel computes the "math" attention, forward and backward.

On a machine without a GPU it runs under Triton's interpreter (TRITON_INTERPRET=1, in a
subprocess, since Triton reads it at import); tests/test_gpu.py runs it on CUDA.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton")

# (batch, tokens, dtype): full blocks from the fewest tokens (3, no boids) to 53 (50 boids)
CASES = [(3, 3, "float32"), (4, 20, "float32"), (2, 53, "float32"), (3, 30, "bfloat16")]

CHECK = r"""
import json, sys, torch
from predlab import model as M
from predlab.gpu_attention import attention as fused
device = sys.argv[1]
out = []
for B, T, dtype in json.loads(sys.argv[2]):
    g = torch.Generator().manual_seed(B * 100 + T)
    D, H = 48, 4
    x = torch.randn(B, T, 3 * D, generator=g) * 2
    keep = torch.rand(B, T, generator=g) > 0.3
    keep[:, :3] = True
    bias = torch.zeros(B, 1, 1, T).masked_fill(~keep[:, None, None, :], M.MASKED)
    dy = torch.randn(B, T, D, generator=g)
    res = {}
    for name in ("math", "triton"):
        dt = getattr(torch, dtype) if name == "triton" else torch.float32
        xs = x.to(device, dt).requires_grad_(True)
        b = bias.to(device, dt)
        y = fused(xs, b, H) if name == "triton" else M.attention(xs, b, H, kernel="math")
        (dx,) = torch.autograd.grad(y, [xs], dy.to(device, y.dtype))
        res[name] = [y.float(), dx.float()]
    err = max(((a - c).abs().max() / c.abs().max()).item() for a, c in zip(res["triton"], res["math"]))
    out.append({"case": [B, T, dtype], "rel_err": err})
print(json.dumps(out))
"""


def _run(script: str, *args: str, interpret: bool = True) -> str:
    """The last line that `python -c script args` prints, with predlab importable (and Triton's
    interpreter on, where asked)."""
    env = dict(os.environ)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    r = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip().splitlines()[-1]


def run_check(device: str, cases=CASES, interpret: bool = True):
    """CHECK's relative errors, one per case."""
    return json.loads(_run(CHECK, device, json.dumps(cases), interpret=interpret))


def tolerance(case, compiled: bool = False) -> float:
    """float32 rounding, or bf16's for bf16 inputs. Compiled for a GPU, the kernel's exp and
    division are the hardware's approximate ones (ex2.approx, div.full: within 2 ulp), where the
    interpreter's are exact; a model of the kernel with those errors reaches ~2e-6."""
    return 2e-2 if case[2] == "bfloat16" else 1e-5 if compiled else 2e-6


def test_fused_attention_matches_math_under_the_interpreter():
    """Outputs and gradients of qkv equal the plain-op attention's within float32 rounding;
    bf16 inputs within bf16's."""
    for r in run_check("cpu"):
        assert r["rel_err"] < tolerance(r["case"]), r


MODEL_CHECK = r"""
import random, sys, torch
from predlab import model as M
from predlab.data import collate
from predlab.model import TransformerPredator
sys.path.insert(0, sys.argv[1])
from conftest import random_sample, randomize
plain = M.attention
batch = collate([random_sample(random.Random(0), n) for n in (0, 1, 7, 40, 13, 2)])
target = torch.rand(len(batch["context"]), 2) * 2 - 1
out = {}
for kernel in ("math", "triton"):
    M.attention = lambda x, bias, n, kernel_=kernel, **kw: plain(x, bias, n, kernel=kernel_)
    m = randomize(TransformerPredator(dropout=0.0), seed=1).train()
    y = m(batch)
    torch.nn.functional.mse_loss(y, target).backward()
    out[kernel] = [y.detach()] + [p.grad for p in m.parameters()]
print(max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item() for a, b in zip(out["triton"], out["math"])))
"""


def test_model_with_the_fused_attention_matches_math_under_the_interpreter():
    """The whole model through the fused kernel (its full blocks, a padded batch of 0 to 40
    boids): the plain-op attention's actions and parameter gradients."""
    assert float(_run(MODEL_CHECK, str(ROOT / "tests"))) < 1e-5


def test_fused_attention_refuses_cpu_tensors_without_the_interpreter():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this process runs Triton's interpreter")
    from predlab import model as M
    x = torch.randn(2, 5, 144)
    with pytest.raises(ValueError, match="CUDA tensors"):
        M.attention(x, torch.zeros(2, 1, 1, 5), 4, kernel="triton")


def test_sequences_past_the_kernels_tiles_take_the_math_kernel():
    """Past 64 tokens (a world of 62+ boids) the fused kernel's tiles would spill or not fit in
    shared memory: model.attention(kernel="triton") computes them with the "math" kernel, and
    the kernel's own entry point refuses them with a message instead of a launch failure."""
    from predlab import model as M
    from predlab.gpu_attention import MAX_TOKENS, attention as fused
    g = torch.Generator().manual_seed(0)
    for T in (MAX_TOKENS + 1, 130):
        x = torch.randn(2, T, 3 * 48, generator=g)
        bias = torch.zeros(2, 1, 1, T)
        bias[0, ..., T - 5:] = M.MASKED
        y = M.attention(x, bias, 4, kernel="triton")     # on the CPU: no Triton launch is possible
        assert torch.equal(y, M.attention(x, bias, 4, kernel="math"))
        with pytest.raises(ValueError, match=f"at most {MAX_TOKENS} tokens"):
            fused(x, bias, 4)

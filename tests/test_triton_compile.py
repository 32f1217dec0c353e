"""predlab's Triton kernels compile for NVIDIA GPUs, with no GPU here: Triton's own compiler and
ptxas, ahead of time, for an H100/H200 (sm_90) and an A100 (sm_80).

The interpreter tests (test_gpu_attention.py, test_gpu_geglu.py) check the maths; they accept
things that the compiler refuses (a plain Python global read in a kernel, for one). Here every
variant a launch can ask for is compiled as the launch compiles it (its constexprs and warps),
and the compiled kernel must keep its tiles in registers: no stack frame, which is where
spilled registers go.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import tempfile

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton")

POINTERS_FP32 = {"Bias", "Lse"}                  # float32 whatever the data's dtype


def _tools():
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.access(cuobjdump, os.X_OK):
        pytest.skip("this Triton has no NVIDIA backend tools (ptxas, cuobjdump)")
    return triton, GPUTarget, ASTSource, cuobjdump


def compile_kernel(fn, dtype: str, constexprs: dict, num_warps: int, arch: int = 90) -> dict:
    """Compile a @triton.jit kernel for sm_<arch>: `scale` float32; T, Tq and lower-case names
    (strides, counts) int32; other capitalised names pointers to `dtype` (Bias and Lse to
    float32). -> registers and stack bytes a thread."""
    triton, GPUTarget, ASTSource, cuobjdump = _tools()
    sig, attrs = {}, {}
    for i, p in enumerate(fn.params):
        if p.is_constexpr or p.name in constexprs:
            sig[p.name] = "constexpr"
        elif p.name == "scale":
            sig[p.name] = "fp32"
        elif p.name in ("T", "Tq"):                                     # token counts: any value
            sig[p.name] = "i32"
        else:
            # pointers (torch's allocations are 16-byte aligned) and the strides and element
            # counts, multiples of 48 here: the launch marks them divisible by 16, as here
            sig[p.name] = ("i32" if p.name[0].islower() else
                           "*fp32" if p.name in POINTERS_FP32 else f"*{dtype}")
            attrs[(i,)] = [["tt.divisibility", 16]]
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs),
                       target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps, "enable_fp_fusion": True})
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(k.asm["cubin"])
        out = subprocess.run([cuobjdump, "--dump-resource-usage", path], capture_output=True, text=True,
                             timeout=60).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", out)
    assert m, out
    return {"registers": int(m.group(1)), "stack": int(m.group(2))}


# score tiles a launch makes: full blocks (queries = keys) of 3 to 64 tokens
TILES = [(16, 16), (32, 32), (64, 64)]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("arch", [90, 80])
def test_fused_attention_compiles_without_spills(dtype, arch):
    from predlab import gpu_attention as A
    assert TILES[-1] == (A._block(A.MAX_TOKENS),) * 2      # the largest tile a launch can ask for
    for BQ, BT in TILES:
        consts = {"H": 4, "HS": 12, "BQ": BQ, "BT": BT, "BD": 16}
        for kernel in (A._forward_kernel, A._backward_kernel):
            r = compile_kernel(kernel, dtype, consts, A._warps(BQ, BT), arch)
            assert r["stack"] == 0, (kernel.__name__, BQ, BT, r)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("arch", [90, 80])
def test_fused_geglu_compiles_without_spills(dtype, arch):
    from predlab import gpu_geglu as G
    for kernel in (G._forward_kernel, G._backward_kernel):
        r = compile_kernel(kernel, dtype, {"F": 96, "BLOCK_": G.BLOCK}, G.WARPS, arch)
        assert r["stack"] == 0 and r["registers"] <= 64, (kernel.__name__, r)

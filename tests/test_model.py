"""The transformer: browser maths (SPEC.md section 6) in float64, padding, permutation, attention."""
from __future__ import annotations

import math
import random
import warnings

import numpy as np
import pytest
import torch

from predlab.data import collate
from predlab.config import ModelConfig
from predlab.model import TransformerPredator


# ---------------------------------------------------------------------- float64 reference
def reference_forward(p: dict, sample: dict) -> np.ndarray:
    """SPEC.md section 6 written out token by token in float64, from the browser weight dict."""
    A = lambda k: np.asarray(k, dtype=np.float64)  # noqa: E731
    d, H = p["d_model"], p["n_heads"]
    hd = d // H
    te = p["type_embeddings"]
    c, pr = sample["context"], sample["predator"]
    tokens = [A(p["cls_embedding"]) + A(te["cls"]),
              A(p["ctx_projection"]) @ [c["canvasWidth"], c["canvasHeight"]] + A(te["ctx"]),
              A(p["predator_projection"]) @ [pr["velX"], pr["velY"], 0.0, 0.0] + A(te["predator"])]
    for b in sample["boids"]:
        tokens.append(A(p["boid_projection"]) @ [b["relX"], b["relY"], b["velX"], b["velY"]] + A(te["boid"]))
    T = len(tokens)

    def layer_norm(x, scale, bias):
        mean = sum(x) / d
        var = sum((xi - mean) ** 2 for xi in x) / d          # biased variance
        return (x - mean) / math.sqrt(var + 1e-6) * A(scale) + A(bias)

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    for L in p["layers"]:
        qkv = [A(L["qkv_weight"]) @ layer_norm(x, L["ln_scale"], L["ln_bias"]) + A(L["qkv_bias"]) for x in tokens]
        q = [v[:d] for v in qkv]
        k = [v[d:2 * d] for v in qkv]
        v = [v[2 * d:] for v in qkv]
        new = []
        for t in range(T):
            heads = []
            for h in range(H):
                sl = slice(h * hd, (h + 1) * hd)
                scores = [float(q[t][sl] @ k[s][sl]) / math.sqrt(hd) for s in range(T)]
                m = max(scores)
                e = [math.exp(s - m) for s in scores]
                z = sum(e)
                heads.append(sum(e[s] / z * v[s][sl] for s in range(T)))
            att = A(L["attn_out_weight"]) @ np.concatenate(heads) + A(L["attn_out_bias"])
            new.append(tokens[t] + att)
        tokens = new
        new = []
        for x in tokens:
            hx = layer_norm(x, L["ffn_ln_scale"], L["ffn_ln_bias"])
            gate = A(L["ffn_gate_weight"]) @ hx + A(L["ffn_gate_bias"])
            up = A(L["ffn_up_weight"]) @ hx + A(L["ffn_up_bias"])
            new.append(x + A(L["ffn_down_weight"]) @ (gelu(gate) * up) + A(L["ffn_down_bias"]))
        tokens = new
    return np.tanh(A(p["output_weight"]) @ tokens[0] + A(p["output_bias"]))


def test_outputs_are_not_saturated(model, samples):
    """The random test weights are non-trivial: outputs vary and are not pinned at +-1."""
    out = model.predict(samples)
    assert (out.abs() < 0.99).any()
    assert out.std() > 0.05


@pytest.mark.parametrize("sizes", [{}, {"d_model": 64, "n_heads": 8, "n_layers": 4}])
def test_matches_float64_reference(make_model, samples, sizes):
    """Model outputs equal SPEC.md section 6 in float64 (0, 1, 7, 50 boids) to 1e-5."""
    model = make_model(3, **sizes)
    params = model.export_to_javascript()
    want = np.stack([reference_forward(params, s) for s in samples])
    got = model.predict(samples).double().numpy()
    assert (np.abs(want) < 0.99).any()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # one at a time as well (single sequences have no padding at all)
    for s, w in zip(samples, want):
        np.testing.assert_allclose(model.predict(s).double().numpy(), w, rtol=0, atol=1e-5)


def test_padded_batch_equals_one_at_a_time(model, make_samples):
    """A padded batch gives the numbers of one sequence at a time (<= 1e-6), padding extra wide too."""
    samples = make_samples([0, 3, 50, 1, 12, 7], seed=5)
    singles = torch.stack([model.predict(s) for s in samples])
    batch = model.predict(samples)
    assert (batch - singles).abs().max() <= 1e-6
    with torch.no_grad():
        wide = model(collate(samples, pad_to=64))
    assert (wide - singles).abs().max() <= 1e-6


def test_padding_content_is_ignored(model, make_samples):
    """Garbage in padded boid slots changes nothing: masked keys really are masked."""
    batch = collate(make_samples([2, 9], seed=6))
    with torch.no_grad():
        clean = model(batch)
        batch["boids"] = torch.where(batch["mask"][..., None], batch["boids"], torch.full_like(batch["boids"], 7.0))
        dirty = model(batch)
    assert (clean - dirty).abs().max() <= 1e-6


def test_boid_order_does_not_matter(model, make_samples):
    """Shuffling the boids leaves the action unchanged (<= 1e-5)."""
    rng = random.Random(11)
    for s in make_samples([2, 7, 50], seed=7):
        shuffled = dict(s, boids=rng.sample(s["boids"], len(s["boids"])))
        assert shuffled["boids"] != s["boids"]
        assert (model.predict(s) - model.predict(shuffled)).abs().max() <= 1e-5


def test_forward_with_attention(model, make_samples):
    """Explicit attention path: same outputs, [B, H, T, T] weights, rows sum to 1, padded keys weight 0."""
    samples = make_samples([0, 4, 9], seed=8)
    batch = collate(samples)
    with torch.no_grad():
        fast = model(batch)
        out, weights = model.forward_with_attention(batch)
    assert (out - fast).abs().max() <= 1e-6
    B, N = batch["mask"].shape
    T = 3 + N
    assert len(weights) == model.config.n_layers
    keep = torch.cat([torch.ones(B, 3, dtype=torch.bool), batch["mask"]], 1)      # [B, T]
    for w in weights:
        assert w.shape == (B, model.config.n_heads, T, T)
        assert torch.allclose(w.sum(-1), torch.ones(B, model.config.n_heads, T), atol=1e-6)
        assert torch.isfinite(w).all()
        assert (w.masked_select(~keep[:, None, None, :].expand_as(w)) == 0).all()
        assert (w.masked_select(keep[:, None, None, :].expand_as(w)) > 0).all()


@pytest.mark.parametrize("counts", [[0, 3, 9, 50], [0, 3, 9, 12]])
def test_training_gradients_equal_the_explicit_path(make_model, make_samples, counts):
    """forward (the last block for [CLS] alone, its key and value projections folded into the
    query) gives every parameter the gradient of the explicit path (every token, every layer),
    in float64 with padded samples: the key bias's gradient, zero in exact maths, included.
    Flocks of 12 boids or fewer take the softmax widened to SOFTMAX_MIN_KEYS."""
    model = make_model(4).double()
    batch = collate(make_samples(counts, seed=12), dtype=torch.float64)
    target = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = []
    for run in (lambda b: model(b), lambda b: model.forward_with_attention(b)[0]):
        ((run(batch) - target) ** 2).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
        model.zero_grad(set_to_none=True)
    for name, want in grads[1].items():
        assert grads[0][name] is not None, f"{name} gets no gradient (AdamW would skip its weight decay)"
        assert (grads[0][name] - want).abs().max() <= 1e-12 * max(1.0, want.abs().max()), name
    D = model.config.d_model
    assert grads[1]["layers.2.qkv.weight"][D:].abs().max() > 1e-3      # keys and values do get gradients


@pytest.mark.parametrize("kernel", ["sliced", "fused"])
def test_a_batch_of_every_boid_count_equals_one_at_a_time_with_the_explicit_paths_gradients(model, make_samples,
                                                                                          monkeypatch, kernel):
    """A float32 training batch holding every boid count from 0 to 50, large enough that the CPU
    attention kernel makes its weights in several slices (as for the trainer's split halves of
    128 samples): each action is the one its sample gets alone, and every parameter's gradient is
    the explicit path's. The other tests' batches fit in one slice (or replace the slicing), so
    slices that missed rows (weights and outputs of the last samples' heads left unwritten) went
    unseen there. Each kernel by name: "auto" takes the fused one for this model, and a sliced kernel that
    dropped its last slice passed."""
    from predlab import model as M
    monkeypatch.setattr(M, "CPU_ATTENTION", kernel)
    samples = make_samples(range(51), seed=14)
    batch = collate(samples)
    B, N = batch["mask"].shape
    assert len(M._Attention._slices(B * model.config.n_heads, 3 + N)) > 1     # several slices
    singles = torch.stack([model.predict(s) for s in samples])
    target = torch.rand(B, 2, generator=torch.Generator().manual_seed(4)) * 2 - 1
    outs, grads = [], []
    for run in (lambda b: model(b), lambda b: model.forward_with_attention(b)[0]):
        out = run(batch)
        ((out - target) ** 2).sum().backward()
        outs.append(out.detach())
        grads.append({n: p.grad for n, p in model.named_parameters()})
        model.zero_grad(set_to_none=True)
    assert (outs[0] - singles).abs().max() <= 1e-6
    for name, want in grads[1].items():
        assert (grads[0][name] - want).abs().max() <= 1e-5 * (want.abs().max() + 1), name


def test_token_labels():
    """Labels follow the token order CLS, CTX, PRED, boid 0..n-1."""
    assert TransformerPredator.token_labels(3) == ["CLS", "CTX", "PRED", "boid 0", "boid 1", "boid 2"]
    assert TransformerPredator.token_labels(0) == ["CLS", "CTX", "PRED"]


def test_constructor_defaults_are_the_cli_model():
    """TransformerPredator() is the model `python -m predlab.train` builds, dropout included
    (a dropout of its own turned the CPU trainer's split batches off)."""
    assert TransformerPredator().config == ModelConfig()


def test_parameter_count():
    """Defaults are 48/4/3/96 with 71,810 parameters, the same number the weight format holds."""
    m = TransformerPredator()
    c = m.config
    assert (c.d_model, c.n_heads, c.n_layers, c.ffn_hidden) == (48, 4, 3, 96)
    assert m.num_parameters() == sum(p.numel() for p in m.parameters()) == 71_810

    def leaves(v):
        return sum(leaves(x) for x in v) if isinstance(v, list) else 1
    p = m.export_to_javascript()
    n = sum(leaves(v) for k, v in p.items() if isinstance(v, list) and k != "layers")
    n += sum(leaves(v) for v in p["type_embeddings"].values())
    n += sum(leaves(v) for layer in p["layers"] for v in layer.values())
    assert n == 71_810


@pytest.mark.parametrize("sizes", [(48, 4, 3, 96), (8, 2, 1, 16), (12, 3, 4, 5)])
def test_checkpoint_weight_shapes_are_the_models(sizes):
    """checkpoint.weight_shapes names every weight with its shape without building the model."""
    from predlab.checkpoint import weight_shapes
    cfg = ModelConfig(*sizes)
    want = {k: tuple(v.shape) for k, v in TransformerPredator.from_config(cfg).state_dict().items()}
    assert weight_shapes(cfg) == want


def test_other_sizes_work(make_model, samples):
    """A 64/8/4 model builds, runs every boid count and keeps its sizes."""
    m = make_model(1, d_model=64, n_heads=8, n_layers=4)
    assert len(m.layers) == 4 and m.config.n_heads == 8
    out = m.predict(samples)
    assert out.shape == (len(samples), 2) and torch.isfinite(out).all()


def test_heads_must_divide_width():
    """d_model not divisible by n_heads is refused with a message naming both."""
    with pytest.raises(ValueError, match=r"d_model=50 is not divisible by n_heads=4"):
        TransformerPredator(d_model=50, n_heads=4)


def test_dropout_is_off_in_eval(make_model, make_samples):
    """Dropout acts while training only: predict() (eval) is deterministic."""
    m = make_model(2, dropout=0.5)
    s = make_samples([5, 9], seed=3)
    assert torch.equal(m.predict(s), m.predict(s))
    m.train()
    batch = collate(s)
    assert not torch.equal(m(batch), m(batch))
    assert m.training  # predict() restores the mode it found


@pytest.mark.parametrize("T", [9, 21])
@pytest.mark.parametrize("dtype,threads", [(torch.float64, 1), (torch.float32, 1), (torch.float32, 2)])
def test_sliced_attention_equals_sdpa_with_gradients(monkeypatch, dtype, threads, T):
    """The CPU attention kernel (own backward, weights made a slice at a time) computes what
    F.scaled_dot_product_attention computes, forward and backward, with padded keys; small
    slices force several of them. In float32 on one thread the head copies are
    predlab.fastops' (torch's otherwise); float64 also passes gradcheck. 9 tokens take the
    softmax widened to SOFTMAX_MIN_KEYS, 21 torch's own."""
    from predlab import model as M
    monkeypatch.setattr(M._Attention, "_slices",
                        staticmethod(lambda n, T, *_: [slice(i, min(i + 3, n)) for i in range(0, n, 3)]))
    copies = []
    if M.fastops is not None:                         # count the numba head copies
        for name in ("split_heads", "merge_heads_t"):
            real = getattr(M.fastops, name)
            monkeypatch.setattr(M.fastops, name, lambda *a, _real=real, _name=name: copies.append(_name) or _real(*a))
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(3)
    B, D, H = 5, 16, 4
    assert (T < M.SOFTMAX_MIN_KEYS) == (T == 9)
    x = torch.randn(B, T, 3 * D, generator=g, dtype=dtype)
    bias = torch.zeros(B, 1, 1, T, dtype=dtype)
    bias[1, ..., 6:] = M.MASKED                       # a padded sample
    bias[3, ..., 3:] = M.MASKED                       # no boids at all
    dy = torch.randn(B, T, D, generator=g, dtype=dtype)
    outs = {}
    try:
        for kernel in ("sliced", "sdpa", "math"):
            xs = x.clone().requires_grad_(True)
            y = M.attention(xs, bias, H, kernel=kernel)
            y.backward(dy)
            outs[kernel] = [y.detach(), xs.grad]
    finally:
        torch.set_num_threads(old_threads)
    assert outs["sliced"][0].shape == dy.shape
    for kernel in ("sliced", "math"):
        for a, b in zip(outs[kernel], outs["sdpa"]):
            assert (a - b).abs().max() <= (1e-12 if dtype == torch.float64 else 2e-6), kernel
    fast = M.fastops is not None and dtype == torch.float32 and threads == 1
    assert len(copies) == (4 if fast else 0)         # forward: split + merge; backward: split dy + merge dx
    if dtype != torch.float64:
        return
    assert torch.autograd.gradcheck(lambda t: M.attention(t, bias[:2], H, kernel="sliced"),
                                    (x[:2].clone().requires_grad_(True),), atol=1e-7)


def test_auto_attention_on_a_cpu_takes_sdpa_only_for_a_backward_on_several_threads(monkeypatch):
    """On one thread (the trainer's split parts) and without a backward (rollouts, validation) the CPU
    runs the sliced kernel; a forward that a backward follows on 2+ threads (--cpu_split 1, a loop of
    one's own) runs F.scaled_dot_product_attention, 1.1-2x faster there. The values agree."""
    from predlab import model as M
    ran = []
    real_sdpa, real_apply = M.F.scaled_dot_product_attention, M._Attention.apply
    monkeypatch.setattr(M.F, "scaled_dot_product_attention", lambda *a, **k: ran.append("sdpa") or real_sdpa(*a, **k))
    monkeypatch.setattr(M._Attention, "apply", lambda *a: ran.append("sliced") or real_apply(*a))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 11, 3 * 16, generator=g)
    bias = torch.zeros(6, 1, 1, 11)
    bias[2, ..., 5:] = M.MASKED
    old_threads = torch.get_num_threads()
    got = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.no_grad():
                got[threads, False] = M.attention(x, bias, 4)
            xs = x.clone().requires_grad_(True)
            y = M.attention(xs, bias, 4)
            y.sum().backward()
            got[threads, True] = (y.detach(), xs.grad)
    finally:
        torch.set_num_threads(old_threads)
    assert ran == ["sliced", "sliced", "sliced", "sdpa"]
    for a, b in zip(got[1, True], got[2, True]):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-6)
    torch.testing.assert_close(got[2, False], got[1, True][0], rtol=0, atol=2e-6)


def test_unknown_attention_kernel_is_a_clear_error():
    from predlab.model import attention
    x, bias = torch.randn(2, 5, 3 * 8), torch.zeros(2, 1, 1, 5)
    with pytest.raises(ValueError, match="attention kernel 'flash': use one of fused, sliced, sdpa, math, triton"):
        attention(x, bias, 2, kernel="flash")


def test_unknown_gpu_geglu_kernel_is_a_clear_error_off_the_cpu_and_none_on_it(monkeypatch, make_model, make_samples):
    """A GPU switch has no effect on a CPU: PREDLAB_GPU_GEGLU=bogus ended a CPU training run in a traceback."""
    from predlab import model as M
    batch = collate(make_samples([3], seed=0))
    monkeypatch.setattr(M, "GPU_GEGLU", "fused")
    assert torch.isfinite(make_model(1)(batch)).all()
    layer = make_model(1).layers[0].to("meta")      # off the CPU (a meta device stands in for a GPU)
    with pytest.raises(ValueError, match="PREDLAB_GPU_GEGLU='fused'"):
        layer.geglu(torch.zeros(2, 48, device="meta"))


@pytest.mark.parametrize("name,value", [("GPU_ATTENTION", "fused"), ("GPU_ATTENTION", "flash"), ("GPU_GEGLU", "Triton"),
                                        ("GPU_LAYER_NORM", "on")])
def test_gpu_switches_are_checked_where_the_kernel_is_chosen_for_a_gpu(monkeypatch, name, value):
    """A typo in a PREDLAB_GPU_* variable went unchecked until the first training step on the GPU (the data made,
    a traceback); PREDLAB_GPU_ATTENTION=auto, as the CPU's takes, failed there too. The start-up memory check asks
    auto_attention_kernel, which names the variable; a CPU is not asked about them."""
    from predlab import model as M
    monkeypatch.setattr(M, name, value)
    with pytest.raises(ValueError, match=f"PREDLAB_{name}='{value}': use one of"):
        M.auto_attention_kernel("cuda", torch.float32, 12, backward=True)
    assert M.auto_attention_kernel("cpu", torch.float32, 12, backward=True) in M.CPU_ATTENTION_KERNELS
    monkeypatch.setattr(M, name, {"GPU_ATTENTION": "auto", "GPU_GEGLU": "triton", "GPU_LAYER_NORM": "torch"}[name])
    assert M.auto_attention_kernel("cuda", torch.float32, 12, backward=True) == ("math" if name == "GPU_ATTENTION"
                                                                                 else M.GPU_ATTENTION)


def test_a_triton_kernel_without_triton_says_what_is_missing(monkeypatch):
    """PREDLAB_GPU_ATTENTION / PREDLAB_GPU_GEGLU=triton where Triton cannot be imported."""
    import sys
    from predlab import model as M
    monkeypatch.setitem(sys.modules, "triton", None)                  # import triton -> ImportError
    for module, what, switch in (("gpu_attention", "attention", "PREDLAB_GPU_ATTENTION"),
                                 ("gpu_geglu", "geglu", "PREDLAB_GPU_GEGLU")):
        monkeypatch.delitem(sys.modules, f"predlab.{module}", raising=False)
        with pytest.raises(RuntimeError, match=f"{switch}=triton\\) needs Triton"):
            M._triton(module, what, switch)


def test_predict_blames_the_weights_when_the_page_s_inputs_overflow_them(make_model, make_samples):
    """Finite float32 weights can overflow the float32 forward (LayerNorm's variance past 2e19), where the page,
    in float64, runs them: predict said the inputs were far outside the page's range, on the page's inputs."""
    from predlab.data import InputError
    model = make_model(0)
    with torch.no_grad():
        model.layers[0].attn_out.bias.normal_(0, 1e20, generator=torch.Generator().manual_seed(0))
    s = make_samples([1], seed=0)[0]
    with pytest.raises(InputError, match=r"the model's float32 forward overflows on its weights .*model\.double\(\)"):
        model.predict(s)
    assert torch.isfinite(model.double().predict(s)).all()
    with torch.no_grad():
        model.layers[0].attn_out.bias[0] = float("nan")
    with pytest.raises(InputError, match="the model's weights hold NaN or infinite values"):
        model.predict(s)


def test_predict_refuses_what_is_not_inputs_and_huge_inputs(model, make_samples):
    from predlab.data import InputError
    assert model.predict([]).shape == (0, 2)
    for bad in (None, 5, "boids"):
        with pytest.raises(InputError, match="predict takes a structured-input dict"):
            model.predict(bad)
    s = make_samples([3], seed=0)[0]
    s["boids"][0]["relX"] = 1e30            # float32 holds it, the model's sums do not
    with pytest.raises(InputError, match=r"sample\(s\) \[0\] is NaN or infinite: their inputs are far outside"), \
            pytest.warns(UserWarning):
        model.predict(s)
    s["boids"][0]["relX"] = 10 ** 400       # a bare OverflowError, naming nothing
    with pytest.raises(InputError, match=r"boids\[0\]\.relX is an integer beyond float32's range"):
        model.predict(s)


def test_predict_warns_of_inputs_the_page_never_gives(model, make_samples):
    """Inputs in pixels (relX 30, a canvas of 800) gave an action without a word; the page scales every
    input into [-1, 1]."""
    samples = make_samples([3, 5], seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # the page's own inputs: no warning
        model.predict(samples)
    samples[1]["boids"][4]["relY"] = -40.0
    with pytest.warns(UserWarning, match=r"sample 1's boids\[4\]\.relY is -40, more than half the canvas "
                                         r"\(canvasHeight .*\), where the page gives wrap-aware offsets / 1000: "
                                         r"inputs in pixels, or unscaled\?"):
        model.predict(samples)
    samples[0]["context"]["canvasWidth"] = 800
    with pytest.warns(UserWarning, match=r"sample 0's context\.canvasWidth is 800, where the page gives the canvas "
                                         r"size / 1000, in \[0, 65.536\]"):
        model.predict(samples)
    samples[0]["context"]["canvasWidth"] = 0.8
    samples[0]["predator"]["velX"] = 2.0
    with pytest.warns(UserWarning, match=r"sample 0's predator\.velX is 2, where the page gives velocities / 3.5, "
                                         r"clamped to \[-1, 1\]"):
        model.predict(samples[0])


@pytest.mark.parametrize("sizes, message", [
    ({"d_model": 10 ** 6, "n_heads": 1}, r"12,000,908,000,578 float32 parameters \(d_model=1000000, n_layers=3"),
    ({"n_layers": 10 ** 5}, r"float32 parameters \(d_model=48, n_layers=100000, ffn_hidden=96\)"),
])
def test_a_model_too_big_for_memory_is_refused_before_allocating(monkeypatch, sizes, message):
    """It raised DefaultCPUAllocator's error, or spent 20 s and more building layers."""
    from predlab import config
    monkeypatch.setattr(config, "physical_memory", lambda: 4 * 2 ** 30)
    with pytest.raises(ValueError, match=r"the model's weights would need about .* GiB of memory, more than "
                                         r"this machine's 4.0 GiB \(.*" + message):
        TransformerPredator(**sizes)


def test_parameter_count_matches_the_model():
    from predlab.model import parameter_count
    for sizes in ({"d_model": 48, "n_layers": 3, "ffn_hidden": 96}, {"d_model": 8, "n_layers": 5, "ffn_hidden": 7}):
        assert TransformerPredator(n_heads=2, **sizes).num_parameters() == parameter_count(**sizes)


def test_from_config_takes_none_a_dict_or_a_config_and_refuses_the_rest():
    from predlab.config import ModelConfig
    assert TransformerPredator.from_config(None).config == ModelConfig()
    assert TransformerPredator.from_config({"d_model": 8, "n_heads": 2}).config.d_model == 8
    with pytest.raises(TypeError, match="cfg must be a ModelConfig or a dict of its fields, not int"):
        TransformerPredator.from_config(3)


def _batch(B=2, N=3, dtype=torch.float32):
    return {"context": torch.ones(B, 2, dtype=dtype), "predator": torch.zeros(B, 2, dtype=dtype),
            "boids": torch.rand(B, N, 4, generator=torch.Generator().manual_seed(0)).to(dtype),
            "mask": torch.ones(B, N, dtype=torch.bool)}


@pytest.mark.parametrize("bad, message", [
    ({}, "batch is missing key 'context'"),
    ([], "takes a batch dict of tensors, not list"),
    ({k: v for k, v in _batch().items() if k != "boids"}, "missing key 'boids'"),
    ({**_batch(), "boids": torch.zeros(2, 3, 5)}, r"batch\['boids'\] has shape \(2, 3, 5\), expected \(2, N, 4\)"),
    ({**_batch(), "context": torch.zeros(2, 3)}, r"batch\['context'\] has shape \(2, 3\)"),
    ({**_batch(), "mask": torch.ones(2, 3, dtype=torch.long)}, r"batch\['mask'\] must be a bool tensor"),
    ({**_batch(), "predator": torch.full((2, 2), math.nan)}, r"batch\['predator'\] contains NaN"),
    (_batch(dtype=torch.float64), r"batch\['context'\] is torch.float64, the model's weights are torch.float32"),
])
def test_forward_with_attention_names_what_is_wrong_with_a_batch(model, bad, message):
    from predlab.data import InputError
    with pytest.raises(InputError, match=message):
        model.forward_with_attention(bad)


@pytest.mark.parametrize("bad, message", [
    ([], "takes a batch dict of tensors, not list"),
    ({k: v for k, v in _batch().items() if k != "mask"}, "missing key 'mask'"),
    ({**_batch(), "boids": _batch()["boids"].numpy()}, r"batch\['boids'\] must be a tensor, got ndarray"),
    ({**_batch(), "context": torch.zeros(2, 3)}, r"batch\['context'\] has shape \(2, 3\)"),
    (_batch(dtype=torch.float64), r"batch\['context'\] is torch.float64, the model's weights are torch.float32"),
    ({k: v[0] for k, v in _batch().items()}, r"batch\['context'\] has shape \(2,\)"),    # unbatched
])
def test_model_call_names_a_batch_torch_failed_on(model, bad, message):
    """model(batch) failed inside torch ("mat1 and mat2 must have the same dtype", "KeyError: 'mask'") where
    forward_with_attention named the problem; it is named once torch fails, at no cost to a good batch."""
    from predlab.data import InputError
    with pytest.raises(InputError, match=message):
        model(bad)


@pytest.mark.parametrize("N", [0, 3])
def test_a_batch_of_no_samples_gives_no_actions(model, N):
    """forward raised 'cannot reshape tensor of 0 elements' in the attention kernel."""
    empty = _batch(B=0, N=N)
    for threads in (1, 2):                       # numba head copies on one thread, torch's else
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            out = model(empty)
        finally:
            torch.set_num_threads(old)
        assert out.shape == (0, 2)
    actions, weights = model.forward_with_attention(empty)
    assert actions.shape == (0, 2) and [w.shape for w in weights] == [(0, 4, N + 3, N + 3)] * 3
    model.train()
    try:
        model(empty).sum().backward()            # training on an empty batch: zero gradients
    finally:
        model.eval()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    assert torch.allclose(model.forward_with_attention(_batch())[0], model(_batch()), atol=1e-6)


def test_dropout_draws_from_the_generator_set_for_its_thread():
    """Dropout under dropout_generator: masks follow that generator (same seed, same mask), keep
    the expectation (scaled by 1/(1-p)), and evaluation mode or no generator is nn.Dropout."""
    from predlab.model import Dropout, dropout_generator
    d = Dropout(0.25).train()
    x = torch.ones(200_000, requires_grad=True)
    outs = []
    for seed in (1, 1, 2):
        with dropout_generator(torch.Generator().manual_seed(seed)):
            outs.append(d(x))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    assert outs[0].unique().tolist() == [0.0, pytest.approx(1 / 0.75)]
    assert abs(float((outs[0] == 0).float().mean()) - 0.25) < 0.01
    outs[0].sum().backward()
    assert torch.equal(x.grad, outs[0].detach())            # the gradient is the same scaled mask
    torch.manual_seed(3)
    a = d(x)
    torch.manual_seed(3)
    assert torch.equal(a, torch.nn.functional.dropout(x, 0.25, training=True))   # no generator: torch's own
    with dropout_generator(torch.Generator().manual_seed(1)):
        assert torch.equal(d.eval()(x), x)


@pytest.mark.parametrize("dtype", [torch.long, torch.uint8, torch.float32])
def test_forward_reads_a_0_1_mask_of_another_dtype_as_the_bool_mask(model, samples, dtype):
    """forward() takes the mask as mask.bool(), but the three fixed tokens' part of it took the
    mask's dtype: an integer mask failed with 'masked_fill_ only supports boolean masks' and a
    float one with '~ is only implemented on integer and Boolean tensors'."""
    batch = collate(samples[:4])
    with torch.no_grad():
        want = model(batch)
        got = model({**batch, "mask": batch["mask"].to(dtype)})
    assert torch.equal(got, want)


def test_a_model_without_weights_is_named_by_every_function_that_runs_or_reads_it(tmp_path, make_samples):
    """A model on the meta device (shapes, no values) failed deep in torch: predict with a torch.nonzero
    registration error, the attention views with "Tensor.item() cannot be called on meta tensors", and
    evaluation and export with "Cannot copy out of meta tensor"."""
    from predlab import evaluate, viz
    from predlab.export import write_weights

    empty = TransformerPredator().to("meta")
    inputs = make_samples([2, 3], seed=0)
    for call in (lambda: empty.predict(inputs), lambda: viz.cls_attention(empty, collate(inputs)),
                 lambda: evaluate.compare(empty, episodes=1, frames=2),
                 lambda: viz.record_rollout(frames=2, n_boids=2, policy=empty),
                 lambda: write_weights(empty, tmp_path / "model.js")):
        with pytest.raises(ValueError, match="the model's weights are on the meta device"):
            call()
    assert not (tmp_path / "model.js").exists()
    given = TransformerPredator()
    empty.to_empty(device="cpu").load_from_javascript(given.export_to_javascript())     # the way the message gives
    assert torch.equal(empty.predict(inputs), given.predict(inputs))


def test_a_float16_model_runs_a_padded_batch(make_model, make_samples):
    """model.half() failed on any batch with "value cannot be converted to type c10::Half without
    overflow": the padding mask was -1e9, beyond float16's range. Padding still gets no weight."""
    model = make_model(0)
    inputs = make_samples([0, 2, 7], seed=3)
    half = make_model(0).half()
    got = half.predict(inputs)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), model.predict(inputs), rtol=0, atol=2e-3)
    for i, one in enumerate(inputs):       # padded to 7 boids, and alone: the same actions
        torch.testing.assert_close(half.predict(one), got[i], rtol=0, atol=1e-3)


@pytest.mark.parametrize("threads", [1, 2])
def test_attention_without_a_backward_takes_larger_slices_and_the_same_values(monkeypatch, threads):
    """Where no backward follows (DAgger's student, validation, evaluation), the CPU kernel makes
    its weights in slices of millions of floats, not the 128k a backward keeps in cache; every
    row of every slice is still written, with what the training forward computes."""
    from predlab import model as M
    asked = []
    real, real_floats = M._Attention._slices, M._Attention.BACKWARD_FLOATS
    monkeypatch.setattr(M._Attention, "_slices", staticmethod(lambda n, T, on_cpu=True, floats=real_floats:
                                                              asked.append(floats) or real(n, T, on_cpu, floats)))
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(5)
        B, T, H = 900, 53, 4                    # 10M floats of weights: several slices either way
        x = torch.randn(B, T, 3 * 48, generator=g) * 3
        n = torch.randint(1, T + 1, (B,), generator=g)
        bias = torch.where(torch.arange(T)[None] < n[:, None], 0.0, M.MASKED).view(B, 1, 1, T)
        with torch.no_grad():
            fast = M.attention(x, bias, H, kernel="sliced")
        trained = M.attention(x.clone().requires_grad_(True), bias, H, kernel="sliced")
    finally:
        torch.set_num_threads(old_threads)
    assert asked == [1 << 20 if threads == 1 else 1 << 22, M._Attention.BACKWARD_FLOATS]
    assert len(real(B * H, T, True, asked[0])) > 1
    torch.testing.assert_close(fast, trained.detach(), rtol=0, atol=1e-6)

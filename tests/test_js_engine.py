"""The shipped JavaScript (predlab/js) under Node: engine vs float64 PyTorch, world.js vs predlab.sim."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import follow_page, page_state
from predlab.data import collate
from predlab.export import model_to_params, read_weights, write_weights
from predlab.sim import World
from predlab.teacher import closest_pursuit
from test_sim import world_from_lists
from test_teacher import edge_cases

JS = Path(__file__).resolve().parents[1] / "predlab" / "js"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="Node.js (node) is not installed")


def node(*args, timeout=60) -> str:
    r = subprocess.run([NODE, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        raise RuntimeError(f"node {' '.join(map(str, args))} failed:\n{r.stderr}")
    return r.stdout


def torch_float64(model, inputs) -> torch.Tensor:
    """Reference actions [B, 2]: the same weights in float64, one sequence at a time."""
    m = model.double().eval()
    with torch.no_grad():
        return torch.stack([m(collate([x], dtype=torch.float64))[0] for x in inputs])


@pytest.mark.parametrize("backend", ["wasm", "js"])
def test_engine_equals_float64_torch(tmp_path, make_model, make_samples, backend):
    """Exact weights (float64 JSON) -> the engine agrees with float64 PyTorch to 1e-6 (in fact ~1e-13)."""
    model = make_model(3)
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps(model_to_params(model)))   # repr() of float32-exact values: lossless
    # 0 .. 50 boids as the browser sees them; 51 (odd token count) and 120 (grows the buffers) too.
    inputs = make_samples([0, 1, 10, 50, 51, 120, 3], seed=5)
    (tmp_path / "in.json").write_text(json.dumps(inputs))
    out = torch.tensor(json.loads(node(JS / "run_node.js", weights, tmp_path / "in.json", "--backend", backend)),
                       dtype=torch.float64)
    ref = torch_float64(model, inputs)
    assert ref.abs().max() < 0.9999 and ref.abs().min() > 1e-3, "outputs saturated or ~0: the comparison would prove little"
    err = (out - ref).abs().max().item()
    assert err <= 1e-6, f"{backend}: max |JS - torch float64| = {err:.3g}"


def test_engine_reads_exported_model_js(tmp_path, make_model, make_samples):
    """The real path: write_weights -> model.js (float32 text) -> engine, vs PyTorch to 1e-6."""
    model = make_model(4)
    path = write_weights(model, tmp_path / "model.js")
    inputs = make_samples([0, 1, 10, 50], seed=6)
    (tmp_path / "in.json").write_text(json.dumps(inputs))
    out = torch.tensor(json.loads(node(JS / "run_node.js", path, tmp_path / "in.json")), dtype=torch.float64)
    err = (out - torch_float64(read_weights(path), inputs)).abs().max().item()
    assert err <= 1e-6, f"max |JS - torch| = {err:.3g}"


def test_runner_reads_json_by_any_case_of_the_extension(tmp_path, make_model, make_samples):
    """write_weights writes plain JSON for model.JSON; the Node runner (and so viz.js_parity) ran it as a
    script, a SyntaxError."""
    model = make_model(4)
    path = write_weights(model, tmp_path / "model.JSON")
    inputs = make_samples([0, 5], seed=6)
    (tmp_path / "in.json").write_text(json.dumps(inputs))
    out = torch.tensor(json.loads(node(JS / "run_node.js", path, tmp_path / "in.json")), dtype=torch.float64)
    assert (out - torch_float64(model, inputs)).abs().max().item() <= 1e-6


def _load_error(tmp_path, params, options="{}") -> str:
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(params))
    script = (f"const {{Engine}} = require({json.dumps(str(JS / 'transformer.js'))});"
              f"const p = require({json.dumps(str(p))});"
              f"try {{ new Engine(p, {options}); console.log('accepted'); }} catch (e) {{ console.log(e.message); }}")
    return node("-e", script).strip()


def test_engine_rejects_bad_params(tmp_path, make_model):
    params = model_to_params(make_model(0))
    missing = json.loads(json.dumps(params))
    del missing["layers"][1]["ffn_up_bias"]
    assert "missing key layers[1].ffn_up_bias" in _load_error(tmp_path, missing)
    short = json.loads(json.dumps(params))
    short["layers"] = short["layers"][:2]
    assert "n_layers = 3" in _load_error(tmp_path, short)
    no_key = json.loads(json.dumps(params))
    del no_key["output_bias"]
    assert "missing key output_bias" in _load_error(tmp_path, no_key)
    shape = json.loads(json.dumps(params))
    shape["layers"][0]["qkv_weight"] = shape["layers"][0]["qkv_weight"][:-1]
    assert "layers[0].qkv_weight has length 143" in _load_error(tmp_path, shape)
    # not objects: named (they gave "Cannot use 'in' operator to search for 'cls' in x" on the page's banner)
    not_object = json.loads(json.dumps(params))
    not_object["type_embeddings"] = "x"
    assert "TRANSFORMER_PARAMS: type_embeddings must be an object" in _load_error(tmp_path, not_object)
    not_object = json.loads(json.dumps(params))
    not_object["layers"][1] = 5
    assert "TRANSFORMER_PARAMS: layers[1] must be an object" in _load_error(tmp_path, not_object)
    small = model_to_params(make_model(0, d_model=32, n_heads=4, n_layers=3, ffn_hidden=96))
    assert _load_error(tmp_path, small) == "accepted"           # any sizes for predlab's own use...
    assert "d_model is 32 but this page runs 48" in _load_error(tmp_path, small, "{requireBrowserSizes: true}")


def test_engine_odd_sizes_fall_back_to_js(tmp_path, make_model, make_samples):
    """Widths the SIMD kernels cannot take (odd head size) run on the JS kernels, still exact."""
    model = make_model(1, d_model=15, n_heads=3, n_layers=2, ffn_hidden=7)
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps(model_to_params(model)))
    inputs = make_samples([0, 4, 9], seed=2)
    (tmp_path / "in.json").write_text(json.dumps(inputs))
    out = torch.tensor(json.loads(node(JS / "run_node.js", weights, tmp_path / "in.json")), dtype=torch.float64)
    assert (out - torch_float64(model, inputs)).abs().max().item() <= 1e-6


# ---------------------------------------------------------------------- world.js
def _world_case():
    """A 50-boid state where every rule fires: spread flock, a dead boid, predator inside the flock, edges."""
    g = torch.Generator().manual_seed(3)
    w = World.random(1, generator=g, dtype=torch.float64, n_boids=50, width=900, height=600)
    w.pos = w.pos + torch.randn(1, 50, 2, generator=g, dtype=torch.float64) * 60
    w.pos[0, 1] = torch.tensor([905.0, -5.0], dtype=torch.float64)     # about to wrap
    w.pos[0, 2] = w.pos[0, 3]                                           # two boids on one point
    w.pred_pos = w.pos[:, 0] + torch.tensor([[5.0, 3.0]], dtype=torch.float64)
    w.alive[0, 7] = False
    return w


def test_world_js_equals_predlab_sim(tmp_path):
    world = _world_case()
    st = world.state_dict()
    state = {"width": 900, "height": 600, "pos": st["pos"][0].tolist(), "vel": st["vel"][0].tolist(),
             "alive": st["alive"][0].tolist(), "predPos": st["pred_pos"][0].tolist(),
             "predVel": st["pred_vel"][0].tolist()}
    actions = [[0.3, -0.8], [1.5, 0.2], [-0.4, -0.4]]                  # 1.5: the action is clamped to 1
    (tmp_path / "case.json").write_text(json.dumps({"state": state, "actions": actions}))
    frames = json.loads(node(JS / "run_world_node.js", tmp_path / "case.json"))["frames"]
    total = 0
    for i, (a, fr) in enumerate(zip(actions, frames)):
        caught = int(world.step(torch.tensor([a], dtype=torch.float64))[0])
        total += caught
        s = fr["state"]
        for key, ref in (("pos", world.pos[0]), ("vel", world.vel[0]), ("predPos", world.pred_pos[0]),
                         ("predVel", world.pred_vel[0])):
            err = (torch.tensor(s[key], dtype=torch.float64) - ref).abs().max().item()
            assert err < 1e-9, f"frame {i + 1}: {key} differs by {err:.3g}"
        assert s["alive"] == world.alive[0].tolist(), f"frame {i + 1}: catches differ"
        assert fr["caught"] == caught
        obs = world.observe()
        live = obs["boids"][0][obs["mask"][0]]
        js_boids = torch.tensor([[b["relX"], b["relY"], b["velX"], b["velY"]] for b in fr["observation"]["boids"]],
                                dtype=torch.float64)
        assert js_boids.shape == live.shape and (js_boids - live).abs().max().item() < 1e-12
        assert fr["observation"]["predator"]["velX"] == pytest.approx(obs["predator"][0, 0].item(), abs=1e-12)
    assert total >= 1, "the case should include a catch"


def test_world_js_of_no_boid_slots_has_none():
    """World(width, height, 0) made NUM_BOIDS slots, as when n is not given: a page of no boids had 50."""
    script = (f"const W = require({json.dumps(str(JS / 'world.js'))});"
              "const r = W.rng(1), none = new W.World(640, 480, 0), given = new W.World(640, 480);"
              "none.reset(r); given.reset(r); console.log(JSON.stringify([none.n, none.numAlive(), given.n]));")
    assert json.loads(node("-e", script)) == [0, 0, 50]


def _js_teacher(tmp_path, inputs) -> torch.Tensor:
    """world.js's closestPursuit on browser-form inputs -> [B, 2]."""
    (tmp_path / "obs.json").write_text(json.dumps(inputs))
    script = (f"const W = require({json.dumps(str(JS / 'world.js'))});"
              f"console.log(JSON.stringify(require({json.dumps(str(tmp_path / 'obs.json'))}).map(W.closestPursuit)));")
    return torch.tensor(json.loads(node("-e", script)), dtype=torch.float64).reshape(-1, 2)


@pytest.mark.parametrize("name, boids, pred, teacher", [
    ("one boid", [[100.0, 100.0, 1.0, 0.5, True]], [300.0, 300.0, 0.1, 0.2], True),
    ("every boid dead", [[100.0, 100.0, 1.0, 0.5, False], [120.0, 100.0, 1.0, 0.5, False]], [300.0, 300.0, 0.1, 0.2],
     True),
    ("boids exactly on the wrap lines", [[650.0, 100.0, 0.0, 0.0, True], [-10.0, 100.0, 0.0, 0.0, True],
                                         [200.0, 490.0, 0.0, 0.0, True], [300.0, -10.0, 0.0, 0.0, True]],
     [660.0, -20.0, 0.0, 0.0], True),
    ("predator on top of a boid", [[100.0, 100.0, 0.0, 0.0, True], [300.0, 300.0, 1.0, 1.0, True]],
     [100.0, 100.0, 0.0, 0.0], True),
    ("three boids equally near", [[150.0, 100.0, 0.0, 0.0, True], [100.0, 150.0, 0.0, 0.0, True],
                                  [50.0, 100.0, 0.0, 0.0, True]], [100.0, 100.0, 0.0, 0.0], True),
    # the predator at rest pushes the boid to exactly 12.6 px (see test_sim): not caught
    ("a boid ending exactly on the catch radius", [[12.44375, 300.0, 0.0, 0.0, True]], [0.0, 300.0, 0.0, 0.0], False),
])
def test_world_js_equals_predlab_sim_at_the_edges(tmp_path, name, boids, pred, teacher):
    """What the 50-boid case above does not reach, driven by the teacher (or by no action): states,
    catches, observations, and world.js's teacher on them."""
    world = world_from_lists([(boids, pred, 640.0, 480.0)])
    actions = []
    for _ in range(3):
        obs = world.observe()
        a = closest_pursuit(obs["boids"], obs["mask"]) if teacher else torch.zeros(1, 2, dtype=torch.float64)
        actions.append(a[0].tolist())
        world.step(torch.tensor([actions[-1]], dtype=torch.float64))
    if not teacher:
        assert world.alive.all() and world.pos[0, 0, 0].item() > 12.6, "the boid should have escaped"
    world = world_from_lists([(boids, pred, 640.0, 480.0)])
    st = world.state_dict()
    state = {"width": 640.0, "height": 480.0, "pos": st["pos"][0].tolist(), "vel": st["vel"][0].tolist(),
             "alive": st["alive"][0].tolist(), "predPos": st["pred_pos"][0].tolist(),
             "predVel": st["pred_vel"][0].tolist()}
    (tmp_path / "case.json").write_text(json.dumps({"state": state, "actions": actions}))
    frames = json.loads(node(JS / "run_world_node.js", tmp_path / "case.json"))["frames"]
    for i, (a, fr) in enumerate(zip(actions, frames)):
        caught = int(world.step(torch.tensor([a], dtype=torch.float64))[0])
        s = fr["state"]
        assert s["alive"] == world.alive[0].tolist() and fr["caught"] == caught, f"{name}, frame {i + 1}: catches"
        for key, ref in (("pos", world.pos[0]), ("vel", world.vel[0]), ("predPos", world.pred_pos[0]),
                         ("predVel", world.pred_vel[0])):
            err = (torch.tensor(s[key], dtype=torch.float64) - ref).abs().max().item()
            assert err < 1e-9, f"{name}, frame {i + 1}: {key} differs by {err:.3g}"
        obs = world.observe()
        js = collate([fr["observation"]], dtype=torch.float64)
        live = obs["boids"][0][obs["mask"][0]]
        assert js["boids"][0][js["mask"][0]].shape == live.shape
        assert torch.allclose(js["boids"][0][js["mask"][0]], live, rtol=0, atol=1e-12)
    inputs = [fr["observation"] for fr in frames]
    batch = collate(inputs, dtype=torch.float64)
    assert torch.equal(_js_teacher(tmp_path, inputs), closest_pursuit(batch["boids"], batch["mask"]))


def test_world_js_teacher_equals_closest_pursuit(tmp_path):
    """Exact ties (the first boid wins), no boid, a boid within 0.001 and just outside it: test_teacher's cases."""
    inputs = edge_cases()
    batch = collate(inputs, dtype=torch.float64)
    assert torch.equal(_js_teacher(tmp_path, inputs), closest_pursuit(batch["boids"], batch["mask"]))


@pytest.mark.parametrize("assignment", ["self.TRANSFORMER_PARAMS = ", "self['TRANSFORMER_PARAMS'] = ",
                                        "var TRANSFORMER_PARAMS = ", "this.TRANSFORMER_PARAMS = "])
def test_runner_reads_a_model_js_setting_its_weights_on_self(tmp_path, make_model, make_samples, assignment):
    """A page's script sees window as self too, and predlab reads such a model.js, but the Node runner
    (behind viz.js_parity) had no self: "ReferenceError: self is not defined"."""
    model = make_model(4)
    text = write_weights(model, tmp_path / "model.js").read_text()
    path = tmp_path / "page_model.js"
    path.write_text(text.replace("window.TRANSFORMER_PARAMS = ", assignment, 1))
    inputs = make_samples([0, 5], seed=6)
    (tmp_path / "in.json").write_text(json.dumps(inputs))
    out = torch.tensor(json.loads(node(JS / "run_node.js", path, tmp_path / "in.json")), dtype=torch.float64)
    assert (out - torch_float64(read_weights(path), inputs)).abs().max().item() <= 1e-6


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be", "utf-8"])
def test_runner_reads_a_model_js_by_its_byte_order_mark(tmp_path, make_model, make_samples, codec):
    """A model.js saved as UTF-16 by Windows PowerShell's `>` runs in the page (the browser follows its
    byte order mark) and predlab reads it; the Node runner read it as UTF-8, a SyntaxError."""
    model = make_model(4)
    for name in ("model.js", "model.json"):
        text = write_weights(model, tmp_path / name).read_text(encoding="utf-8")
        (tmp_path / name).write_bytes(("\ufeff" + text).encode(codec))
        inputs = make_samples([0, 5], seed=6)
        (tmp_path / "in.json").write_text(json.dumps(inputs))
        out = torch.tensor(json.loads(node(JS / "run_node.js", tmp_path / name, tmp_path / "in.json")),
                           dtype=torch.float64)
        assert (out - torch_float64(read_weights(tmp_path / name), inputs)).abs().max().item() <= 1e-6


# ---------------------------------------------------------------------- closed loop
def _closed_loop_case(width, height, n_boids, seed):
    g = torch.Generator().manual_seed(seed)
    return World.random(1, generator=g, dtype=torch.float64, n_boids=n_boids, width=width, height=height)


@pytest.mark.parametrize("weights, width, height, n_boids, seed, frames, catches", [
    ("pursuit", 1000, 700, 50, 0, 200, True),    # the page's flock, hunted: boids die and the inputs shrink
    ("random", 1000, 700, 50, 3, 200, False),
    ("pursuit", 320, 320, 20, 0, 300, True),     # the smallest canvas of training: wraps all the time
    ("pursuit", 3840, 2160, 1, 0, 300, False),   # the largest, one boid
    ("pursuit", 640, 480, 200, 0, 50, False),    # a flock beyond the page's (the engine grows its buffers)
])
def test_world_js_driven_by_the_engine_follows_predlab_driven_by_pytorch(tmp_path, make_model, weights, width,
                                                                         height, n_boids, seed, frames, catches):
    """The page's loop (world.js observes, the engine steers through World.modelAction, world.js steps)
    against predlab's (sim.World driven by the exported model in float64 PyTorch, as evaluate runs it),
    frame by frame: a difference in either world, in the inputs the page builds or in the engine shows
    here as it would on the page. The flock is chaotic: rounding differences of 1e-16 (sums in another
    order) grow about 10x every 10 frames at 200 boids and every 50 at 50 boids, so each case stops
    well before they could reach 1e-6 (2026-12-02: at most 4.6e-9 in these cases)."""
    from test_browser import pursuit_model
    model = pursuit_model() if weights == "pursuit" else make_model(11)
    path = write_weights(model, tmp_path / "model.js")
    world = _closed_loop_case(width, height, n_boids, seed)
    (tmp_path / "case.json").write_text(json.dumps({"state": page_state(world), "frames": frames}))
    js = json.loads(node(JS / "run_world_node.js", tmp_path / "case.json", path))["frames"]
    assert len(js) == frames
    caught = follow_page([{"action": fr["action"], **fr["state"]} for fr in js], world, path)
    if catches:
        assert caught >= 1, "the pursuing model should catch: the case would not reach shrinking flocks"


def test_a_trained_model_runs_in_the_engine_as_in_float32_pytorch(tmp_path):
    """What a user ships: a model trained here (its weights, LayerNorm scales and biases moved by AdamW,
    not drawn at random), exported to model.js and run by the page's engine on the inputs of its own
    episodes, against the float32 PyTorch model that training left. SPEC.md: about 1e-6."""
    from predlab.config import WorldConfig
    from predlab.data import generate_episodes, to_dicts
    from predlab.train import create_trainer
    from predlab.viz import js_parity
    world = WorldConfig(frames=40, boids_max=50, width_max=1600, height_max=1000)
    trainer = create_trainer(train_episodes=16, val_episodes=2, batch_size=32, device="cpu", verbose=False,
                             world_config=world, eval_every=0, progress=False, dagger=False, callbacks=[])
    trainer.train(8)
    model = trainer.model.eval()
    assert trainer.history[-1]["val_loss"] < trainer.history[0]["val_loss"]       # it learned something
    frames = generate_episodes(3, world, seed=11)
    inputs = to_dicts(frames.batch(torch.arange(0, len(frames), 7)))
    assert len(inputs) >= 12 and len({len(d["boids"]) for d in inputs}) >= 3     # flocks of several sizes
    res = js_parity(model, inputs, weights=write_weights(model, tmp_path / "model.js"))
    assert res["torch"].shape == (len(inputs), 2) and abs(res["torch"]).max() > 0.1
    assert res["max_abs_diff"] <= 1e-6, f"max |JS - torch float32| = {res['max_abs_diff']:.3g}"


def _sample(n):
    return {"context": {"canvasWidth": 1.92, "canvasHeight": 1.08}, "predator": {"velX": 0.1, "velY": -0.2},
            "boids": [{"relX": 0.01 * k, "relY": -0.02, "velX": 0.3, "velY": 0.1} for k in range(n)]}


def _scores_past_a_billion(case):
    """Legal float32 weights whose attention scores pass 1e9: every real key's far below zero ("low"), or
    a padded key's raw score far above the real ones' ("high"). No training reaches them (the README's
    trained model peaks near 421), but the page runs them, and PyTorch must give its numbers."""
    from predlab.model import TransformerPredator
    torch.manual_seed(0)
    m = TransformerPredator(dropout=0.0).eval()
    D = m.config.d_model
    with torch.no_grad():
        if case == "low":
            last = m.layers[-1]
            last.ln1.weight.mul_(1e-3)
            last.ln1.bias.fill_(1e4)
            last.qkv.weight[:D].zero_()
            last.qkv.bias[:D].fill_(-1e4)
            last.qkv.weight[D:2 * D].copy_(torch.eye(D) * 100)
        else:
            m.type_embeddings.normal_(0, 1)
            m.cls_embedding.normal_(0, 1)
            m.boid_projection.weight.normal_(0, 1)
            for layer in m.layers[:2]:
                layer.attn_out.weight.mul_(50)
            m.layers[0].qkv.weight[:2 * D].mul_(1e6)
    return m


@pytest.mark.parametrize("case", ["low", "high"])
def test_padding_gets_no_weight_whatever_the_scores(tmp_path, case):
    """A padded key's score was -1e9, which real scores below -1e9 lost to, and a padded key's own score 1e9
    above the real ones beat: a flock of 12 boids or fewer (padded to the CPU softmax's width), or a sample
    batched with a larger flock, got other actions than in the page, which pads nothing."""
    model = _scores_past_a_billion(case)
    path = write_weights(model, tmp_path / "model.js")
    inputs = [_sample(n) for n in ((0, 5, 12, 13) if case == "low" else (0, 20))]
    (tmp_path / "in.json").write_text(json.dumps(inputs))
    page = torch.tensor(json.loads(node(JS / "run_node.js", path, tmp_path / "in.json")))
    alone = torch.stack([model.predict(x).float() for x in inputs])
    batched = model.predict(inputs).float()
    assert (alone - page).abs().max() < 1e-4, (alone, page)
    assert (batched - page).abs().max() < 1e-4, (batched, page)

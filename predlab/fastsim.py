"""One CPU frame of a whole chunk as numba kernels: observation, teacher and step (SPEC.md 3-5).

The torch World spends a CPU frame in memory-bound [E, N, N] broadcasts; here each environment
is one loop nest over its flock, which stays in cache, and environments are split over threads.
The physics is World's (synchronous boids, the same formulas, comparisons and fast magnitude):
one frame agrees to float rounding, since only the order in which the neighbour sums are added
differs. Whole episodes do not: a flock starts at one point, where rounding decides directions,
so trajectories part within ~50 frames; the samples are statistically alike.

State arrays are World's, as numpy: pos, vel [E, N, 2]; alive [E, N] bool; pred_pos, pred_vel,
size [E, 2]. The kernels are generic over float32/float64 (numba compiles one version per
dtype): every constant is cast to the state's dtype, so float32 state is computed in float32,
as torch does.
"""
from __future__ import annotations

import threading

import numba
import numpy as np
import torch
from numba import prange

from . import config as C
from .fastops import cached_njit

# Reassociation lets LLVM vectorise the neighbour sums over j; no other fast-math liberty
# (no finite-math or reciprocal assumptions), so comparisons and divisions stay exact. The
# numpy error model gives IEEE results for a division by zero, as torch does, instead of
# Python's ZeroDivisionError check, whose branch would also stop the vectorisation.
_FASTMATH = {"reassoc"}
_JIT = dict(cache=True, error_model="numpy")
LANES = 8        # the neighbour loop runs over whole vectors of this many boids (AVX: 8 float32)
_FAR = 1e12      # a coordinate no live boid is within 60 px of; its square is finite in float32


def _njit(**options):
    return cached_njit("predlab.fastsim", _JIT, **options)


def scratch(num_envs: int, n_slots: int, dtype) -> np.ndarray:
    """The `snap` work array step() and frame() need: [E, 4, N rounded up to LANES]."""
    return np.empty((num_envs, 4, -(-n_slots // LANES) * LANES), dtype)


# numba's OpenMP layer would share torch's OpenMP runtime: its start resets the thread count
# torch was given, and with another process holding a core its spinning barriers cut a
# 2-thread rollout to a fifth of the 1-thread rate. The workqueue layer has neither problem
# (and is as fast on an idle machine) but must not be entered from two threads at once,
# hence _LOCK around every launch. A layer chosen with NUMBA_THREADING_LAYER still wins.
_LOCK = threading.Lock()


def set_threads(threads: int) -> None:
    """Run the parallel kernels on `threads` threads (at most numba's pool size)."""
    if numba.config.THREADING_LAYER == "default":     # nobody chose; read when numba starts its threads
        numba.config.THREADING_LAYER = "workqueue"
    torch_threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    if torch.get_num_threads() != torch_threads:      # an OpenMP layer started and reset torch's count
        torch.set_num_threads(torch_threads)


# ---------------------------------------------------------------------- SPEC.md section 2, per vector
@_njit()
def _fast(x, y, a, b):
    """Fast magnitude a * max(|x|, |y|) + b * min(|x|, |y|) with a = 0.96, b = 0.398 in the state dtype."""
    ax, ay = abs(x), abs(y)
    return a * max(ax, ay) + b * min(ax, ay)


@_njit()
def _limit(x, y, m, a, b):
    """sim.limit for one vector: scaled down to fast magnitude m when above it."""
    mag = _fast(x, y, a, b)
    if mag > m:
        s = m / mag
        return x * s, y * s
    return x, y


@_njit()
def _set_magnitude(x, y, m, a, b, tiny):
    """sim.set_magnitude for one vector (the same floor, the dtype's smallest normal number, so a zero
    vector stays zero; m is 3.5 or 1 here, whose m / tiny is finite)."""
    s = m / max(_fast(x, y, a, b), tiny)
    return x * s, y * s


@_njit()
def _wrap(p, size, margin):
    """The browser's wrap of one coordinate (sim._wrap)."""
    hi = size + margin
    if p > hi:
        p = -margin
    if p < -margin:
        p = hi
    return p


@_njit()
def _wrap_delta(d, size, two):
    """Wrap-aware offset of one coordinate (sim.wrap_delta)."""
    if abs(d) > size / two:
        return d - size if d > 0 else d + size
    return d


@_njit()
def _clamp1(v, one):
    """v clamped to [-1, 1], as torch's clamp(-1, 1)."""
    return min(max(v, -one), one)


# ---------------------------------------------------------------------- one environment
@_njit()
def _observe_env(e, pos, vel, alive, pred_pos, pred_vel, size, r, ctx, pred, boids, n, target):
    """World.observe() + closest_pursuit for env e, live boids compacted in slot order.

    Writes row r of ctx [R, 2], pred [R, 2], boids [R, N, 4] (zero padded), n [R], target [R, 2]
    unless r < 0. Returns the teacher's action (tx, ty) either way.
    """
    F = pos.dtype.type
    zero, one, two = F(0.0), F(1.0), F(2.0)
    D, V = F(C.MAX_DISTANCE), F(C.VELOCITY_SCALE)
    W, H = size[e, 0], size[e, 1]
    px, py = pred_pos[e, 0], pred_pos[e, 1]
    best, bx, by = np.inf, zero, zero               # the teacher's distances in float64, as closest_pursuit's
    k = 0
    for s in range(pos.shape[1]):
        if not alive[e, s]:
            continue
        rx = _wrap_delta(pos[e, s, 0] - px, W, two) / D
        ry = _wrap_delta(pos[e, s, 1] - py, H, two) / D
        if r >= 0:
            boids[r, k, 0] = rx
            boids[r, k, 1] = ry
            boids[r, k, 2] = _clamp1(vel[e, s, 0] / V, one)
            boids[r, k, 3] = _clamp1(vel[e, s, 1] / V, one)
        x64, y64 = np.float64(rx), np.float64(ry)       # exact, and so are their squares
        dist = np.sqrt(x64 * x64 + y64 * y64)
        if dist < best:                                   # strict: ties go to the first boid
            best, bx, by = dist, rx, ry
        k += 1
    tx = ty = zero
    if k > 0 and best >= 0.001:                       # the browser's 0.001, not float32's (4.7e-11 above)
        tx, ty = F(np.float64(bx) / best), F(np.float64(by) / best)
    if r >= 0:
        for s in range(k, boids.shape[1]):
            for c in range(4):
                boids[r, s, c] = zero
        ctx[r, 0], ctx[r, 1] = W / D, H / D
        pred[r, 0] = _clamp1(pred_vel[e, 0] / V, one)
        pred[r, 1] = _clamp1(pred_vel[e, 1] / V, one)
        n[r] = k
        target[r, 0], target[r, 1] = tx, ty
    return tx, ty


@_njit(fastmath=_FASTMATH)
def _step_env(e, pos, vel, alive, pred_pos, pred_vel, size, weights, ax_, ay_, snap):
    """World.step for env e with action (ax_, ay_); returns the live boids left after catches.

    snap [4, >= N rounded up to LANES] is this env's scratch for the live flock's snapshot (x, y,
    vx, vy): every boid reads the state before the frame (World's synchronous update, see
    World._boid_acceleration).
    """
    F = pos.dtype.type
    zero, one = F(0.0), F(1.0)
    a, b, tiny = F(0.96), F(0.398), F(np.finfo(pos.dtype).tiny)
    eps = F(C.EPSILON)
    near, sep_d = F(C.BOID_NEIGHBOR_DISTANCE), F(C.BOID_DESIRED_SEPARATION)
    max_speed, max_force = F(C.BOID_MAX_SPEED), F(C.BOID_MAX_FORCE)
    p_range, p_turn, p_avoid = F(C.PREDATOR_RANGE), F(C.PREDATOR_TURN_FACTOR), F(C.PREDATOR_AVOID_LIMIT)
    w_coh, w_sep, w_ali = weights[0], weights[1], weights[2]
    W, H = size[e, 0], size[e, 1]
    ppx, ppy = pred_pos[e, 0], pred_pos[e, 1]
    xs, ys, us, vs = snap[0], snap[1], snap[2], snap[3]
    N = pos.shape[1]
    m = 0
    for s in range(N):
        if alive[e, s]:
            xs[m], ys[m] = pos[e, s, 0], pos[e, s, 1]
            us[m], vs[m] = vel[e, s, 0], vel[e, s, 1]
            m += 1
    # Pad the flock to whole vectors with boids too far away to be anyone's neighbour (as
    # World moves dead boids away), so the neighbour loop has no scalar remainder.
    far = F(_FAR)
    mpad = -(-m // LANES) * LANES
    for j in range(m, mpad):
        xs[j], ys[j], us[j], vs[j] = far, far, zero, zero

    k = 0                                                 # rank of slot s among live boids
    for s in range(N):
        if not alive[e, s]:
            continue
        i = k
        k += 1
        xi, yi, ui, vi = xs[i], ys[i], us[i], vs[i]
        # Neighbour sums over every other live boid j: cohesion d <= 60, separation d < 40,
        # alignment d < 60, with d = |p_i - p_j| + EPSILON (> 0 always). Masks are 0/1
        # factors rather than branches, and boid i itself is moved far away for the loop
        # rather than skipped (its terms are exact zeros), so that the loop vectorises.
        xs[i] = far
        cx = cy = sx = sy = gx = gy = zero
        nc = ns = na = zero
        for j in range(mpad):
            dx = xi - xs[j]
            dy = yi - ys[j]
            raw = np.sqrt(dx * dx + dy * dy)
            d = raw + eps
            fc = one if d <= near else zero
            fs = one if d < sep_d else zero
            fa = one if d < near else zero
            w = fs / ((raw if raw != zero else one) * d)  # normalize(p_i - p_j) / d; a zero vector stays zero
            cx += fc * xs[j]
            cy += fc * ys[j]
            nc += fc
            sx += dx * w
            sy += dy * w
            ns += fs
            gx += fa * us[j]
            gy += fa * vs[j]
            na += fa
        xs[i] = xi
        fx = fy = zero
        if nc > zero:                                     # cohesion: toward the neighbours' centre
            mx, my = _set_magnitude(cx / nc - xi, cy / nc - yi, max_speed, a, b, tiny)
            mx, my = _limit(mx - ui, my - vi, max_force, a, b)
            fx, fy = fx + mx * w_coh, fy + my * w_coh
        if ns > zero:                                     # separation
            mx, my = _set_magnitude(sx / ns, sy / ns, max_speed, a, b, tiny)
            mx, my = _limit(mx - ui, my - vi, max_force, a, b)
            fx, fy = fx + mx * w_sep, fy + my * w_sep
        if na > zero:                                     # alignment
            mx, my = _set_magnitude(gx / na, gy / na, max_speed, a, b, tiny)
            mx, my = _limit(mx - ui, my - vi, max_force, a, b)
            fx, fy = fx + mx * w_ali, fy + my * w_ali
        qx, qy = xi - ppx, yi - ppy                       # predator avoidance
        d = np.sqrt(qx * qx + qy * qy) + eps
        if d < p_range:
            qx, qy = _set_magnitude(qx, qy, one, a, b, tiny)
            push = (p_range - d) / p_range * p_turn
            qx, qy = _limit(qx * push, qy * push, p_avoid, a, b)
            fx, fy = fx + qx, fy + qy
        nvx, nvy = _limit(ui + fx, vi + fy, max_speed, a, b)
        vel[e, s, 0], vel[e, s, 1] = nvx, nvy
        pos[e, s, 0] = _wrap(xi + nvx, W, F(C.BOID_BORDER_OFFSET))
        pos[e, s, 1] = _wrap(yi + nvy, H, F(C.BOID_BORDER_OFFSET))

    # the predator, after the boids, then catches against its new position
    ax_, ay_ = _clamp1(ax_, one), _clamp1(ay_, one)
    pmf = F(C.PREDATOR_MAX_FORCE)
    pvx, pvy = _limit(pred_vel[e, 0] + ax_ * pmf, pred_vel[e, 1] + ay_ * pmf, F(C.PREDATOR_MAX_SPEED), a, b)
    pred_vel[e, 0], pred_vel[e, 1] = pvx, pvy
    ppx = pred_pos[e, 0] = _wrap(ppx + pvx, W, F(C.PREDATOR_BORDER_OFFSET))
    ppy = pred_pos[e, 1] = _wrap(ppy + pvy, H, F(C.PREDATOR_BORDER_OFFSET))
    catch = F(C.CATCH_RADIUS)
    for s in range(N):
        if alive[e, s]:
            qx, qy = pos[e, s, 0] - ppx, pos[e, s, 1] - ppy
            if np.sqrt(qx * qx + qy * qy) < catch:
                alive[e, s] = False
                m -= 1
    return m


# ---------------------------------------------------------------------- all environments
@_njit(parallel=True)
def _observe_all(pos, vel, alive, pred_pos, pred_vel, size, rows, ctx, pred, boids, n, target):
    for e in prange(pos.shape[0]):
        if rows[e] >= 0:
            _observe_env(e, pos, vel, alive, pred_pos, pred_vel, size, rows[e], ctx, pred, boids, n, target)


@_njit(parallel=True)
def _step_all(pos, vel, alive, pred_pos, pred_vel, size, weights, action, live, snap):
    for e in prange(pos.shape[0]):
        live[e] = _step_env(e, pos, vel, alive, pred_pos, pred_vel, size, weights, action[e, 0], action[e, 1],
                            snap[e])


@_njit(parallel=True)
def _frame_all(pos, vel, alive, pred_pos, pred_vel, size, weights, noise, live, row0, ctx, pred, boids, n, target,
               snap):
    E = pos.shape[0]
    rows = np.empty(E, np.int64)
    r = row0
    for e in range(E):
        rows[e] = r if live[e] > 0 else -1
        r += live[e] > 0
    for e in prange(E):
        tx, ty = _observe_env(e, pos, vel, alive, pred_pos, pred_vel, size, rows[e], ctx, pred, boids, n, target)
        live[e] = _step_env(e, pos, vel, alive, pred_pos, pred_vel, size, weights, tx + noise[e, 0],
                            ty + noise[e, 1], snap[e])
    return r - row0


def _need(name: str, a, shape, dtype, written: bool = True) -> None:
    """ValueError naming the array a kernel would read or write past its end, or misread: numba checks
    no bounds, so a short array was read beyond its end (actions of other memory) or written beyond it
    (a scratch array too small corrupted the heap: a segfault later)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"fastsim: {name} must be a numpy array, not {type(a).__name__}")
    ok = a.ndim == len(shape) and all(w is None or (got >= w if lo else got == w)
                                      for got, (w, lo) in zip(a.shape, shape))
    if not ok or a.dtype != dtype or not a.flags.c_contiguous or (written and not a.flags.writeable):
        want = "(" + ", ".join("?" if w is None else f">={w}" if lo else str(w) for w, lo in shape) + ")"
        raise ValueError(f"fastsim: {name} is {a.dtype} {a.shape}"
                         f"{'' if a.flags.c_contiguous else ' (not C-contiguous)'}"
                         f"{'' if a.flags.writeable or not written else ' (read-only)'}; expected a C-contiguous"
                         f"{', writeable' if written else ''} {dtype} "
                         f"array of shape {want}")


def _check_state(state) -> tuple:
    """(E, N, dtype) of a kernel state (pos, vel, alive, pred_pos, pred_vel, size), checked."""
    if not isinstance(state, (tuple, list)) or len(state) != 6:
        raise TypeError("fastsim: state must be (pos, vel, alive, pred_pos, pred_vel, size) (data.kernel_arrays)")
    pos = state[0]
    if not isinstance(pos, np.ndarray) or pos.ndim != 3 or pos.shape[2] != 2 or \
            pos.dtype not in (np.float32, np.float64):
        raise ValueError(f"fastsim: pos must be a float32 or float64 array [E, N, 2], got "
                         f"{getattr(pos, 'dtype', type(pos).__name__)} {getattr(pos, 'shape', '')}")
    E, N, _ = pos.shape
    dt = pos.dtype
    for name, a, shape, kind in zip(("pos", "vel", "alive", "pred_pos", "pred_vel", "size"), state,
                                    ((E, N, 2), (E, N, 2), (E, N), (E, 2), (E, 2), (E, 2)),
                                    (dt, dt, np.bool_, dt, dt, dt)):
        _need(name, a, [(w, False) for w in shape], kind)
    return E, N, dt


def _check_step(state, weights, live, snap) -> tuple:
    E, N, dt = _check_state(state)
    _need("weights", weights, [(3, False)], dt, written=False)
    _need("live", live, [(E, False)], np.int64)
    _need("snap", snap, [(E, False), (4, False), (-(-N // LANES) * LANES, True)], dt)
    return E, N, dt


def _check_rows(E, N, dt, used: int, ctx, pred, boids, n, target) -> None:
    """The sample arrays: `used` rows at least, boids N wide at least."""
    for name, a, shape, kind in (("ctx", ctx, [(used, True), (2, False)], dt),
                                 ("pred", pred, [(used, True), (2, False)], dt),
                                 ("boids", boids, [(used, True), (N, True), (4, False)], dt),
                                 ("n", n, [(used, True)], np.int64),
                                 ("target", target, [(used, True), (2, False)], dt)):
        _need(name, a, shape, kind)
    if not len(ctx) == len(pred) == len(boids) == len(n) == len(target):
        raise ValueError("fastsim: ctx, pred, boids, n and target must have as many rows")


# The entry points: every array C-contiguous, float arrays of the state's dtype, integer arrays
# int64, each of its size (checked: ValueError). They run on torch.get_num_threads() threads.
def observe(state, rows, ctx, pred, boids, n, target) -> None:
    """World.observe() and closest_pursuit of every env e with rows[e] >= 0, written into that row.

    state = (pos, vel, alive, pred_pos, pred_vel, size); rows [E]; ctx, pred, target [R, 2];
    boids [R, N, 4] (live boids first in slot order, zero padded); n [R] (live boids).
    """
    E, N, dt = _check_state(state)
    _need("rows", rows, [(E, False)], np.int64, written=False)
    _check_rows(E, N, dt, int(rows.max()) + 1 if E else 0, ctx, pred, boids, n, target)
    with _LOCK:
        set_threads(torch.get_num_threads())
        _observe_all(*state, rows, ctx, pred, boids, n, target)


def step(state, weights, action, live, snap) -> None:
    """World.step(action) in place for every env; live [E] gets the live boids left.

    weights [3] (cohesion, separation, alignment); action [E, 2]; snap [E, 4, N] scratch.
    """
    E, N, dt = _check_step(state, weights, live, snap)
    _need("action", action, [(E, False), (2, False)], dt, written=False)
    with _LOCK:
        set_threads(torch.get_num_threads())
        _step_all(*state, weights, action, live, snap)


def frame(state, weights, noise, live, row0, ctx, pred, boids, n, target, snap) -> int:
    """One teacher-driven frame: observe, label and step every env, driving with teacher + noise [E, 2].

    Envs with live[e] > 0 (live boids before the frame) write rows row0, row0 + 1, ... in env
    order, as observe() does; live is then updated as step() does. Returns the rows written.
    """
    E, N, dt = _check_step(state, weights, live, snap)
    _need("noise", noise, [(E, False), (2, False)], dt, written=False)
    row0 = int(row0)
    if row0 < 0:
        raise ValueError(f"fastsim: row0 must be >= 0, got {row0}")
    _check_rows(E, N, dt, row0 + int((live > 0).sum()), ctx, pred, boids, n, target)
    with _LOCK:
        set_threads(torch.get_num_threads())
        return int(_frame_all(*state, weights, noise, live, row0, ctx, pred, boids, n, target, snap))

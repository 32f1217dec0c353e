/*
 * The boids world of the browser page (SPEC.md sections 1-5), in plain JavaScript.
 *
 * In a page it defines window.PredlabWorld, under Node it is a CommonJS module. It follows
 * predlab.sim.World number for number (tests/test_js_engine.py checks one frame to 1e-9):
 * boids first, then the predator, then catches; dead boids keep their slot, masked out.
 *
 * One deliberate difference from the original browser page: the page updated boids one at a
 * time in place (a boid saw the new state of the boids before it in the same frame). Like
 * predlab's simulator, this world updates every boid from one snapshot of the frame
 * (synchronous), so what the page shows is exactly what predlab trains and evaluates on.
 */
(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory();
  else root.PredlabWorld = factory();
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";

  var C = {
    BOID_MAX_SPEED: 3.5, BOID_MAX_FORCE: 0.1, BOID_DESIRED_SEPARATION: 40, BOID_NEIGHBOR_DISTANCE: 60,
    BOID_BORDER_OFFSET: 10, PREDATOR_MAX_SPEED: 2, PREDATOR_MAX_FORCE: 0.2, PREDATOR_SIZE: 18,
    CATCH_RADIUS: 0.7 * 18, PREDATOR_RANGE: 80, PREDATOR_TURN_FACTOR: 0.3, PREDATOR_AVOID_LIMIT: 0.15,
    PREDATOR_BORDER_OFFSET: 20, MAX_DISTANCE: 1000, VELOCITY_SCALE: 3.5, NUM_BOIDS: 50, EPSILON: 1e-7,
    SEPARATION_WEIGHT: 2, COHESION_WEIGHT: 1, ALIGNMENT_WEIGHT: 1
  };

  // Seeded uniform [0, 1) generator (mulberry32): a seed fixes an episode.
  function rng(seed) {
    var a = seed >>> 0;
    return function () {
      a = (a + 0x6d2b79f5) >>> 0;
      var t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  // The browser's alpha-max-beta-min magnitude. limit / setMagnitude return a shared [x, y].
  function fast(x, y) {
    var ax = Math.abs(x), ay = Math.abs(y);
    return 0.96 * Math.max(ax, ay) + 0.398 * Math.min(ax, ay);
  }
  var tmp = [0, 0];
  function limit(x, y, m) {
    var g = fast(x, y);
    if (g > m) { var s = m / g; tmp[0] = x * s; tmp[1] = y * s; } else { tmp[0] = x; tmp[1] = y; }
    return tmp;
  }
  function setMagnitude(x, y, m) {
    var g = fast(x, y);
    if (g > 0) { var s = m / g; tmp[0] = x * s; tmp[1] = y * s; } else { tmp[0] = x; tmp[1] = y; }
    return tmp;
  }
  function wrap(p, size, margin) {
    if (p > size + margin) return -margin;
    if (p < -margin) return size + margin;
    return p;
  }
  function wrapDelta(d, size) {
    return Math.abs(d) > size / 2 ? (d > 0 ? d - size : d + size) : d;
  }
  function clamp1(v) { return v < -1 ? -1 : v > 1 ? 1 : v; }

  // width, height: canvas size in px; n: boid slots (NUM_BOIDS when not given; 0 is none).
  function World(width, height, n) {
    this.width = width; this.height = height;
    this._alloc(n === undefined ? C.NUM_BOIDS : n);
    this.predX = width / 2; this.predY = height / 2; this.predVX = 0; this.predVY = 0;
    this.frame = 0; this.catches = 0;
    this.cohesionWeight = C.COHESION_WEIGHT; this.separationWeight = C.SEPARATION_WEIGHT;
    this.alignmentWeight = C.ALIGNMENT_WEIGHT;
  }

  World.prototype._alloc = function (n) {
    this.n = n;
    this.px = new Float64Array(n); this.py = new Float64Array(n);
    this.vx = new Float64Array(n); this.vy = new Float64Array(n);
    this.ax = new Float64Array(n); this.ay = new Float64Array(n);
    this.alive = new Uint8Array(n);
    this.obs = new Float64Array(4 * n);
  };

  // Start an episode as the browser does (SPEC.md section 3), drawing from rand() in [0, 1).
  World.prototype.reset = function (rand, n) {
    if (n !== undefined && n !== this.n) this._alloc(n);
    var sx = Math.floor(rand() * this.width), sy = Math.floor(rand() * this.height);
    for (var i = 0; i < this.n; i++) {
      var a = rand() * 2 * Math.PI;
      this.px[i] = sx; this.py[i] = sy; this.vx[i] = Math.cos(a); this.vy[i] = Math.sin(a); this.alive[i] = 1;
    }
    this.predX = this.width / 2; this.predY = this.height / 2;
    this.predVX = rand() * 2 - 1; this.predVY = rand() * 2 - 1;
    this.frame = 0; this.catches = 0;
  };

  // State as plain arrays: {width, height, pos: [[x, y]], vel, alive: [bool], predPos, predVel, frame, catches}.
  World.prototype.getState = function () {
    var pos = [], vel = [], alive = [];
    for (var i = 0; i < this.n; i++) {
      pos.push([this.px[i], this.py[i]]); vel.push([this.vx[i], this.vy[i]]); alive.push(!!this.alive[i]);
    }
    return { width: this.width, height: this.height, pos: pos, vel: vel, alive: alive,
      predPos: [this.predX, this.predY], predVel: [this.predVX, this.predVY], frame: this.frame, catches: this.catches };
  };

  World.prototype.setState = function (s) {
    var n = s.pos.length;
    if (s.vel.length !== n || (s.alive && s.alive.length !== n)) throw new Error("setState: pos, vel and alive differ in length");
    this.width = s.width; this.height = s.height;
    this._alloc(n);
    for (var i = 0; i < n; i++) {
      this.px[i] = s.pos[i][0]; this.py[i] = s.pos[i][1]; this.vx[i] = s.vel[i][0]; this.vy[i] = s.vel[i][1];
      this.alive[i] = s.alive ? (s.alive[i] ? 1 : 0) : 1;
    }
    this.predX = s.predPos[0]; this.predY = s.predPos[1]; this.predVX = s.predVel[0]; this.predVY = s.predVel[1];
    this.frame = s.frame || 0; this.catches = s.catches || 0;
  };

  World.prototype.numAlive = function () {
    var c = 0;
    for (var i = 0; i < this.n; i++) c += this.alive[i];
    return c;
  };

  // Flocking plus predator avoidance of every live boid from one snapshot -> this.ax, this.ay.
  World.prototype._accelerations = function () {
    var n = this.n, px = this.px, py = this.py, vx = this.vx, vy = this.vy, alive = this.alive;
    var MS = C.BOID_MAX_SPEED, MF = C.BOID_MAX_FORCE, v;
    for (var i = 0; i < n; i++) {
      this.ax[i] = 0; this.ay[i] = 0;
      if (!alive[i]) continue;
      var cx = 0, cy = 0, cn = 0, sx = 0, sy = 0, sn = 0, lx = 0, ly = 0, ln = 0;
      for (var j = 0; j < n; j++) {
        if (j === i || !alive[j]) continue;
        var dx = px[i] - px[j], dy = py[i] - py[j];
        var raw = Math.sqrt(dx * dx + dy * dy), d = raw + C.EPSILON;
        if (d <= C.BOID_NEIGHBOR_DISTANCE) { cx += px[j]; cy += py[j]; cn++; }
        if (d > 0 && d < C.BOID_DESIRED_SEPARATION) {
          var u = raw > 0 ? raw : 1;
          sx += (1 / d) * (dx / u); sy += (1 / d) * (dy / u); sn++;  // as predlab: (1/d) * unit
        }
        if (d > 0 && d < C.BOID_NEIGHBOR_DISTANCE) { lx += vx[j]; ly += vy[j]; ln++; }
      }
      var accX = 0, accY = 0;
      if (cn) {
        v = setMagnitude(cx / cn - px[i], cy / cn - py[i], MS);
        v = limit(v[0] - vx[i], v[1] - vy[i], MF);
        accX += this.cohesionWeight * v[0]; accY += this.cohesionWeight * v[1];
      }
      if (sn) {
        v = setMagnitude(sx / sn, sy / sn, MS);
        v = limit(v[0] - vx[i], v[1] - vy[i], MF);
        accX += this.separationWeight * v[0]; accY += this.separationWeight * v[1];
      }
      if (ln) {
        v = setMagnitude(lx / ln, ly / ln, MS);
        v = limit(v[0] - vx[i], v[1] - vy[i], MF);
        accX += this.alignmentWeight * v[0]; accY += this.alignmentWeight * v[1];
      }
      var ex = px[i] - this.predX, ey = py[i] - this.predY, pd = Math.sqrt(ex * ex + ey * ey) + C.EPSILON;
      if (pd < C.PREDATOR_RANGE) {
        var k = (C.PREDATOR_RANGE - pd) / C.PREDATOR_RANGE * C.PREDATOR_TURN_FACTOR;
        v = setMagnitude(ex, ey, 1);
        v = limit(v[0] * k, v[1] * k, C.PREDATOR_AVOID_LIMIT);
        accX += v[0]; accY += v[1];
      }
      this.ax[i] = accX; this.ay[i] = accY;
    }
  };

  // One frame: boids (synchronously, see the file comment), then the predator driven by
  // action [ax, ay] in [-1, 1], then catches. Returns the number of boids caught this frame.
  World.prototype.step = function (action) {
    this._accelerations();
    var n = this.n, i, v;
    for (i = 0; i < n; i++) {
      if (!this.alive[i]) continue;
      v = limit(this.vx[i] + this.ax[i], this.vy[i] + this.ay[i], C.BOID_MAX_SPEED);
      this.vx[i] = v[0]; this.vy[i] = v[1];
      this.px[i] = wrap(this.px[i] + v[0], this.width, C.BOID_BORDER_OFFSET);
      this.py[i] = wrap(this.py[i] + v[1], this.height, C.BOID_BORDER_OFFSET);
    }
    var fx = clamp1(action[0]) * C.PREDATOR_MAX_FORCE, fy = clamp1(action[1]) * C.PREDATOR_MAX_FORCE;
    v = limit(this.predVX + fx, this.predVY + fy, C.PREDATOR_MAX_SPEED);
    this.predVX = v[0]; this.predVY = v[1];
    this.predX = wrap(this.predX + v[0], this.width, C.PREDATOR_BORDER_OFFSET);
    this.predY = wrap(this.predY + v[1], this.height, C.PREDATOR_BORDER_OFFSET);
    var caught = 0;
    for (i = 0; i < n; i++) {
      if (!this.alive[i]) continue;
      var dx = this.px[i] - this.predX, dy = this.py[i] - this.predY;
      if (Math.sqrt(dx * dx + dy * dy) < C.CATCH_RADIUS) { this.alive[i] = 0; caught++; }
    }
    this.frame++;
    this.catches += caught;
    return caught;
  };

  // The model's inputs (SPEC.md section 4) as the browser's dict; live boids in slot order.
  World.prototype.observe = function () {
    var D = C.MAX_DISTANCE, V = C.VELOCITY_SCALE, boids = [];
    var n = this.observeFlat();
    for (var k = 0; k < n; k++)
      boids.push({ relX: this.obs[4 * k], relY: this.obs[4 * k + 1], velX: this.obs[4 * k + 2], velY: this.obs[4 * k + 3] });
    return {
      context: { canvasWidth: this.width / D, canvasHeight: this.height / D },
      predator: { velX: clamp1(this.predVX / V), velY: clamp1(this.predVY / V) },
      boids: boids
    };
  };

  // The boid part of observe() into this.obs ([relX, relY, velX, velY] per live boid) -> count.
  World.prototype.observeFlat = function () {
    var D = C.MAX_DISTANCE, V = C.VELOCITY_SCALE, o = this.obs, k = 0;
    for (var i = 0; i < this.n; i++) {
      if (!this.alive[i]) continue;
      o[4 * k] = wrapDelta(this.px[i] - this.predX, this.width) / D;
      o[4 * k + 1] = wrapDelta(this.py[i] - this.predY, this.height) / D;
      o[4 * k + 2] = clamp1(this.vx[i] / V);
      o[4 * k + 3] = clamp1(this.vy[i] / V);
      k++;
    }
    return k;
  };

  // The model's action [x, y] for this frame: engine (transformer.js's Engine) on observe()'s inputs,
  // after observeFlat() returned n > 0 (the browser never runs the model without a boid). The page
  // steers through this, so the Node tests that compare it with PyTorch check the page's own inputs.
  World.prototype.modelAction = function (engine, n) {
    var D = C.MAX_DISTANCE, V = C.VELOCITY_SCALE;
    return engine.forwardFlat(this.width / D, this.height / D, clamp1(this.predVX / V), clamp1(this.predVY / V),
      this.obs, n);
  };

  // The teacher (SPEC.md section 5): unit vector toward the nearest boid; [0, 0] with none or
  // one within 0.001. Takes flat boids [relX, relY, velX, velY] x n.
  function closestPursuitFlat(boids, n) {
    var best = Infinity, bx = 0, by = 0;
    for (var k = 0; k < n; k++) {
      var x = boids[4 * k], y = boids[4 * k + 1], d = Math.sqrt(x * x + y * y);
      if (d < best) { best = d; bx = x; by = y; }
    }
    if (!(best < Infinity) || best < 0.001) return [0, 0];
    return [bx / best, by / best];
  }
  function closestPursuit(input) {
    var b = input.boids || [], flat = new Float64Array(4 * b.length);
    for (var k = 0; k < b.length; k++) { flat[4 * k] = b[k].relX; flat[4 * k + 1] = b[k].relY; }
    return closestPursuitFlat(flat, b.length);
  }

  return { World: World, rng: rng, constants: C, closestPursuit: closestPursuit, closestPursuitFlat: closestPursuitFlat };
});

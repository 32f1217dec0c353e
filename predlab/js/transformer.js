/*
 * predlab's browser engine for the predator transformer (SPEC.md section 6).
 *
 * Plain JavaScript, no build step: in a page it defines window.PredlabTransformer, under
 * Node it is a CommonJS module. Numbers are float64; weights are flattened once into typed
 * arrays and every buffer is allocated once per model (grown when a larger flock appears),
 * so a forward pass allocates nothing.
 *
 *   const engine = new PredlabTransformer.Engine(window.TRANSFORMER_PARAMS);
 *   const [ax, ay] = engine.forward(structuredInputs);
 */
(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory();
  else root.PredlabTransformer = factory();
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";

  var BROWSER_SIZES = { d_model: 48, n_heads: 4, n_layers: 3, ffn_hidden: 96 };
  var SIZE_KEYS = ["d_model", "n_heads", "n_layers", "ffn_hidden"];
  var TYPES = ["cls", "ctx", "predator", "boid"];
  var LAYER_KEYS = ["ln_scale", "ln_bias", "qkv_weight", "qkv_bias", "attn_out_weight", "attn_out_bias",
    "ffn_ln_scale", "ffn_ln_bias", "ffn_gate_weight", "ffn_gate_bias", "ffn_up_weight", "ffn_up_bias",
    "ffn_down_weight", "ffn_down_bias"];
  var GELU_C = Math.sqrt(2 / Math.PI);

  function fail(msg) { throw new Error("TRANSFORMER_PARAMS: " + msg); }

  // Flatten a [rows][cols] (or [n]) array into a Float64Array, checking its shape.
  function flat(value, shape, path) {
    var rows = shape[0], cols = shape.length > 1 ? shape[1] : 0;
    if (!Array.isArray(value)) fail(path + " must be an array");
    if (value.length !== rows) fail(path + " has length " + value.length + ", expected " + rows);
    var out = new Float64Array(cols ? rows * cols : rows);
    for (var i = 0; i < rows; i++) {
      if (cols) {
        var row = value[i];
        if (!Array.isArray(row) || row.length !== cols) fail(path + "[" + i + "] must have length " + cols);
        for (var j = 0; j < cols; j++) {
          var x = row[j];
          if (typeof x !== "number" || !isFinite(x)) fail(path + "[" + i + "][" + j + "] is not a finite number");
          out[i * cols + j] = x;
        }
      } else {
        if (typeof value[i] !== "number" || !isFinite(value[i])) fail(path + "[" + i + "] is not a finite number");
        out[i] = value[i];
      }
    }
    return out;
  }

  // The browser's checks (every key present, layer count, sizes) plus shapes and finiteness.
  function loadParams(p, options) {
    options = options || {};
    if (!p || typeof p !== "object") fail("not an object");
    var s = {};
    SIZE_KEYS.forEach(function (k) {
      if (!(k in p)) fail("missing key " + k);
      if (!Number.isInteger(p[k]) || p[k] < 1) fail(k + " must be a positive integer");
      s[k] = p[k];
      if (options.requireBrowserSizes && p[k] !== BROWSER_SIZES[k])
        fail(k + " is " + p[k] + " but this page runs " + BROWSER_SIZES[k]);
    });
    var d = s.d_model, f = s.ffn_hidden;
    if (d % s.n_heads !== 0) fail("d_model is not divisible by n_heads");
    ["cls_embedding", "type_embeddings", "ctx_projection", "predator_projection", "boid_projection", "layers",
      "output_weight", "output_bias"].forEach(function (k) { if (!(k in p)) fail("missing key " + k); });
    if (!Array.isArray(p.layers) || p.layers.length !== s.n_layers)
      fail("layers must have n_layers = " + s.n_layers + " entries");
    var w = {
      d: d, h: s.n_heads, f: f, L: s.n_layers,
      cls: flat(p.cls_embedding, [d], "cls_embedding"),
      type: TYPES.map(function (t) {
        if (!p.type_embeddings || !(t in p.type_embeddings)) fail("missing key type_embeddings." + t);
        return flat(p.type_embeddings[t], [d], "type_embeddings." + t);
      }),
      ctx: flat(p.ctx_projection, [d, 2], "ctx_projection"),
      pred: flat(p.predator_projection, [d, 4], "predator_projection"),
      boid: flat(p.boid_projection, [d, 4], "boid_projection"),
      outW: flat(p.output_weight, [2, d], "output_weight"),
      outB: flat(p.output_bias, [2], "output_bias"),
      layers: p.layers.map(function (l, i) {
        var at = "layers[" + i + "].";
        LAYER_KEYS.forEach(function (k) { if (!l || !(k in l)) fail("missing key " + at + k); });
        return {
          ln1s: flat(l.ln_scale, [d], at + "ln_scale"), ln1b: flat(l.ln_bias, [d], at + "ln_bias"),
          qkvW: flat(l.qkv_weight, [3 * d, d], at + "qkv_weight"), qkvB: flat(l.qkv_bias, [3 * d], at + "qkv_bias"),
          oW: flat(l.attn_out_weight, [d, d], at + "attn_out_weight"), oB: flat(l.attn_out_bias, [d], at + "attn_out_bias"),
          ln2s: flat(l.ffn_ln_scale, [d], at + "ffn_ln_scale"), ln2b: flat(l.ffn_ln_bias, [d], at + "ffn_ln_bias"),
          gW: flat(l.ffn_gate_weight, [f, d], at + "ffn_gate_weight"), gB: flat(l.ffn_gate_bias, [f], at + "ffn_gate_bias"),
          uW: flat(l.ffn_up_weight, [f, d], at + "ffn_up_weight"), uB: flat(l.ffn_up_bias, [f], at + "ffn_up_bias"),
          dW: flat(l.ffn_down_weight, [d, f], at + "ffn_down_weight"), dB: flat(l.ffn_down_bias, [d], at + "ffn_down_bias")
        };
      })
    };
    return w;
  }

  // y[o] = b[o] + sum_i W[o][i] * x[xOff + i]  for one row; W flat [out][in].
  function linear(W, b, x, xOff, nIn, y, yOff, nOut) {
    for (var o = 0; o < nOut; o++) {
      var acc = b ? b[o] : 0, wo = o * nIn;
      for (var i = 0; i < nIn; i++) acc += W[wo + i] * x[xOff + i];
      y[yOff + o] = acc;
    }
  }

  function layerNorm(x, off, d, scale, bias, y, yOff) {
    var mean = 0, i;
    for (i = 0; i < d; i++) mean += x[off + i];
    mean /= d;
    var v = 0;
    for (i = 0; i < d; i++) { var c = x[off + i] - mean; v += c * c; }
    var inv = 1 / Math.sqrt(v / d + 1e-6);
    for (i = 0; i < d; i++) y[yOff + i] = (x[off + i] - mean) * inv * scale[i] + bias[i];
  }

  function Engine(params, options) {
    this.w = loadParams(params, options);
    this.capacity = 0;
    this.lastAttention = null;
    this._ensure(3 + 50);
  }

  Engine.prototype._ensure = function (T) {
    if (T <= this.capacity) return;
    var d = this.w.d, f = this.w.f;
    this.capacity = T;
    this.x = new Float64Array(T * d);
    this.hn = new Float64Array(T * d);
    this.qkv = new Float64Array(T * 3 * d);
    this.att = new Float64Array(T * d);
    this.scores = new Float64Array(T);
    this.g = new Float64Array(f);
    this.u = new Float64Array(f);
    this.tmp = new Float64Array(d);
    this.inp = new Float64Array(4);
  };

  // One structured input {context, predator, boids: [...]} -> [x, y] in [-1, 1].
  Engine.prototype.forward = function (input) {
    var w = this.w, d = w.d, H = w.h, hs = d / H, f = w.f;
    var boids = input.boids || [];
    var nb = boids.length, T = 3 + nb;
    this._ensure(T);
    var x = this.x, hn = this.hn, qkv = this.qkv, att = this.att, sc = this.scores, inp = this.inp;
    var i, j, k, t, h;
    for (i = 0; i < d; i++) x[i] = w.cls[i] + w.type[0][i];
    inp[0] = input.context.canvasWidth; inp[1] = input.context.canvasHeight;
    linear(w.ctx, w.type[1], inp, 0, 2, x, d, d);
    inp[0] = input.predator.velX; inp[1] = input.predator.velY; inp[2] = 0; inp[3] = 0;
    linear(w.pred, w.type[2], inp, 0, 4, x, 2 * d, d);
    for (k = 0; k < nb; k++) {
      var b = boids[k];
      inp[0] = b.relX; inp[1] = b.relY; inp[2] = b.velX; inp[3] = b.velY;
      linear(w.boid, w.type[3], inp, 0, 4, x, (3 + k) * d, d);
    }
    var scale = 1 / Math.sqrt(hs);
    for (var l = 0; l < w.L; l++) {
      var L = w.layers[l];
      // Only [CLS] feeds the output, so the last block needs queries and FFN for row 0 alone.
      var rows = l === w.L - 1 ? 1 : T;
      for (t = 0; t < T; t++) {
        layerNorm(x, t * d, d, L.ln1s, L.ln1b, hn, t * d);
        linear(L.qkvW, L.qkvB, hn, t * d, d, qkv, t * 3 * d, 3 * d);
      }
      for (t = 0; t < rows; t++) {
        for (h = 0; h < H; h++) {
          var qo = t * 3 * d + h * hs, max = -Infinity;
          for (j = 0; j < T; j++) {
            var ko = j * 3 * d + d + h * hs, s = 0;
            for (i = 0; i < hs; i++) s += qkv[qo + i] * qkv[ko + i];
            s *= scale;
            sc[j] = s;
            if (s > max) max = s;
          }
          var sum = 0;
          for (j = 0; j < T; j++) { sc[j] = Math.exp(sc[j] - max); sum += sc[j]; }
          var ao = t * d + h * hs;
          for (i = 0; i < hs; i++) att[ao + i] = 0;
          for (j = 0; j < T; j++) {
            var p = sc[j] / sum, vo = j * 3 * d + 2 * d + h * hs;
            for (i = 0; i < hs; i++) att[ao + i] += p * qkv[vo + i];
          }
        }
      }
      var tmp = this.tmp, g = this.g, u = this.u;
      for (t = 0; t < rows; t++) {
        linear(L.oW, L.oB, att, t * d, d, tmp, 0, d);
        for (i = 0; i < d; i++) x[t * d + i] += tmp[i];
        layerNorm(x, t * d, d, L.ln2s, L.ln2b, hn, t * d);
        linear(L.gW, L.gB, hn, t * d, d, g, 0, f);
        linear(L.uW, L.uB, hn, t * d, d, u, 0, f);
        for (i = 0; i < f; i++) {
          var z = g[i];
          g[i] = 0.5 * z * (1 + Math.tanh(GELU_C * (z + 0.044715 * z * z * z))) * u[i];
        }
        linear(L.dW, L.dB, g, 0, f, tmp, 0, d);
        for (i = 0; i < d; i++) x[t * d + i] += tmp[i];
      }
    }
    var out = [0, 0];
    for (var o = 0; o < 2; o++) {
      var acc = w.outB[o];
      for (i = 0; i < d; i++) acc += w.outW[o * d + i] * x[i];
      out[o] = Math.tanh(acc);
    }
    return out;
  };

  return { Engine: Engine, loadParams: loadParams, BROWSER_SIZES: BROWSER_SIZES };
});

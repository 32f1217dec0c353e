/*
 * predlab's browser engine for the predator transformer (SPEC.md section 6).
 *
 * Plain JavaScript, no build step: in a page it defines window.PredlabTransformer, under
 * Node it is a CommonJS module. All maths is float64 (results agree with float64 PyTorch to
 * ~1e-13). Weights and activations live in one Float64Array heap, allocated once (grown when
 * a larger flock appears), so a forward pass allocates nothing but the returned pair.
 *
 * Speed (~10x the straightforward loops: ~0.7 ms at 50 boids on a 2-core AMD EPYC VM):
 * the products, softmax, GEGLU and LayerNorm run in a small WebAssembly SIMD module (f64x2)
 * that this file assembles itself at load time (no binary blob, no network); where WebAssembly
 * SIMD is missing, or a width is odd, the same kernels run in plain JS (engine.backend says
 * which). On top of that, two exact rewrites cut the work: block 1's tokens are affine in at
 * most 4 inputs before its LayerNorm, so their Q/K/V come from a [3d][6] matrix; and only
 * [CLS] reaches the output, so the last block folds W_k into the query and applies W_v after
 * the softmax, never computing K or V.
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
  var LN_EPS = 1e-6;
  var PAD_SCORE = -1e300; // score of the padding key when T is odd: exp() gives ~0, never NaN

  function fail(msg) { throw new Error("TRANSFORMER_PARAMS: " + msg); }

  // ------------------------------------------------------------------ loading and validation
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
    if (!p.type_embeddings || typeof p.type_embeddings !== "object")
      fail("type_embeddings must be an object with keys " + TYPES.join(", "));
    if (!Array.isArray(p.layers) || p.layers.length !== s.n_layers)
      fail("layers must have n_layers = " + s.n_layers + " entries, found " +
        (Array.isArray(p.layers) ? p.layers.length : "no array"));
    return {
      d: d, h: s.n_heads, f: f, L: s.n_layers,
      cls: flat(p.cls_embedding, [d], "cls_embedding"),
      type: TYPES.map(function (t) {
        if (!(t in p.type_embeddings)) fail("missing key type_embeddings." + t);
        return flat(p.type_embeddings[t], [d], "type_embeddings." + t);
      }),
      ctx: flat(p.ctx_projection, [d, 2], "ctx_projection"),
      pred: flat(p.predator_projection, [d, 4], "predator_projection"),
      boid: flat(p.boid_projection, [d, 4], "boid_projection"),
      outW: flat(p.output_weight, [2, d], "output_weight"),
      outB: flat(p.output_bias, [2], "output_bias"),
      layers: p.layers.map(function (l, i) {
        var at = "layers[" + i + "].";
        if (!l || typeof l !== "object") fail("layers[" + i + "] must be an object");
        LAYER_KEYS.forEach(function (k) { if (!(k in l)) fail("missing key " + at + k); });
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
  }

  // ------------------------------------------------------------------ kernels, plain JS
  // Offsets and strides are in float64 elements of the heap F. The WebAssembly kernels below
  // compute the same things (in another summation order).
  function jsKernels(F, maxO) {
    var row = new Float64Array(maxO);
    return {
      // y[t][o] = (acc ? y[t][o] : 0) + b[o] + sum_k x[t][k] wt[k][o]   (wt: the weight transposed)
      gemm: function (x, xs, T, wt, ws, O, K, b, y, ys, acc) {
        for (var t = 0; t < T; t++) {
          var xo = x + t * xs, yo = y + t * ys, o;
          for (o = 0; o < O; o++) row[o] = 0;
          for (var k = 0; k < K; k++) {
            var xv = F[xo + k], wo = wt + k * ws;
            for (o = 0; o < O; o++) row[o] += xv * F[wo + o];
          }
          for (o = 0; o < O; o++) F[yo + o] = (acc ? F[yo + o] : 0) + F[b + o] + row[o];
        }
      },
      // each of rows rows (stride ss): softmax(scale * s) over n entries, in place
      softmax: function (s, rows, n, ss, scale) {
        for (var r = 0; r < rows; r++) {
          var p = s + r * ss, m = -Infinity, i, sum = 0;
          for (i = 0; i < n; i++) if (F[p + i] > m) m = F[p + i];
          for (i = 0; i < n; i++) { var e = Math.exp((F[p + i] - m) * scale); F[p + i] = e; sum += e; }
          var inv = 1 / sum;
          for (i = 0; i < n; i++) F[p + i] *= inv;
        }
      },
      // out[r][i] = gelu_tanh(g[r][i]) * g[r][f + i]; gelu_tanh(z) = z * sigmoid(2 c (z + 0.044715 z^3))
      geglu: function (g, rows, f, gs, out, os) {
        for (var r = 0; r < rows; r++) {
          var gp = g + r * gs, op = out + r * os;
          for (var i = 0; i < f; i++) {
            var z = F[gp + i];
            F[op + i] = z / (1 + Math.exp(-2 * GELU_C * (z + 0.044715 * z * z * z))) * F[gp + f + i];
          }
        }
      },
      layernorm: function (x, rows, d, xs, sc, bi, y, ys) {
        for (var r = 0; r < rows; r++) {
          var xp = x + r * xs, yp = y + r * ys, mean = 0, v = 0, i;
          for (i = 0; i < d; i++) mean += F[xp + i];
          mean /= d;
          for (i = 0; i < d; i++) { var c = F[xp + i] - mean; v += c * c; }
          var inv = 1 / Math.sqrt(v / d + LN_EPS);
          for (i = 0; i < d; i++) F[yp + i] = (F[xp + i] - mean) * inv * F[sc + i] + F[bi + i];
        }
      }
    };
  }

  // ------------------------------------------------------------------ kernels, WebAssembly SIMD
  // A minimal assembler: each kernel is written as WebAssembly text instructions (one flat
  // list, named locals and block labels) and turned into a module of a few KB at load time.
  var OPS = {
    "block": [0x02, "bt"], "loop": [0x03, "bt"], "end": [0x0b], "br": [0x0c, "label"], "br_if": [0x0d, "label"],
    "select": [0x1b], "local.get": [0x20, "local"], "local.set": [0x21, "local"], "local.tee": [0x22, "local"],
    "f64.load": [0x2b, "mem"], "f64.store": [0x39, "mem"],
    "i32.const": [0x41, "int"], "i64.const": [0x42, "int"], "f64.const": [0x44, "f64"],
    "i32.lt_s": [0x48], "i32.ge_s": [0x4e], "i32.add": [0x6a], "i32.sub": [0x6b], "i32.mul": [0x6c], "i32.shl": [0x74],
    "f64.add": [0xa0], "f64.sub": [0xa1], "f64.mul": [0xa2], "f64.div": [0xa3], "f64.max": [0xa5], "f64.sqrt": [0x9f],
    "v128.load": [0xfd, 0x00, "mem"], "v128.load64_splat": [0xfd, 0x0a, "mem"], "v128.store": [0xfd, 0x0b, "mem"], "f64x2.const": [0xfd, 0x0c, "f64x2"],
    "i64x2.splat": [0xfd, 0x12], "f64x2.splat": [0xfd, 0x14], "f64x2.extract_lane": [0xfd, 0x21, "lane"],
    "i64x2.shl": [0xfd, 0xcb, 0x01], "i64x2.add": [0xfd, 0xce, 0x01],
    "f64x2.add": [0xfd, 0xf0, 0x01], "f64x2.sub": [0xfd, 0xf1, 0x01], "f64x2.mul": [0xfd, 0xf2, 0x01],
    "f64x2.div": [0xfd, 0xf3, 0x01], "f64x2.max": [0xfd, 0xf5, 0x01],
    "f64x2.pmin": [0xfd, 0xf6, 0x01], "f64x2.pmax": [0xfd, 0xf7, 0x01]
  };
  var VALTYPE = { i32: 0x7f, f64: 0x7c, v128: 0x7b };

  function uleb(n, out) { do { var b = n & 0x7f; n >>>= 7; if (n) b |= 0x80; out.push(b); } while (n); }
  function sleb(n, out) {
    for (;;) {
      var b = n & 0x7f; n >>= 7;
      if ((n === 0 && !(b & 0x40)) || (n === -1 && (b & 0x40))) { out.push(b); return; }
      out.push(b | 0x80);
    }
  }
  function f64bytes(x, out) {
    var u = new Uint8Array(new Float64Array([x]).buffer);
    for (var i = 0; i < 8; i++) out.push(u[i]);
  }
  function pushVec(items, out) { uleb(items.length, out); items.forEach(function (it) { for (var i = 0; i < it.length; i++) out.push(it[i]); }); }
  function pushStr(s, out) { uleb(s.length, out); for (var i = 0; i < s.length; i++) out.push(s.charCodeAt(i)); }

  // fn = {name, params: [[name, type]], locals: [[name, type]], body: "instructions"}
  function assembleBody(fn) {
    var idx = {}, n = 0, code = [], groups = [], labels = [];
    fn.params.concat(fn.locals).forEach(function (p) { idx[p[0]] = n++; });
    fn.locals.forEach(function (l) {
      var g = groups[groups.length - 1];
      if (g && g[1] === l[1]) g[0]++; else groups.push([1, l[1]]);
    });
    uleb(groups.length, code);
    groups.forEach(function (g) { uleb(g[0], code); code.push(VALTYPE[g[1]]); });
    var toks = fn.body.split(/\s+/).filter(Boolean);
    for (var i = 0; i < toks.length; i++) {
      var op = OPS[toks[i]];
      if (!op) throw new Error("wasm kernel " + fn.name + ": unknown instruction " + toks[i]);
      for (var j = 0; j < op.length; j++) {
        var b = op[j];
        if (typeof b === "number") { code.push(b); continue; }
        var a = toks[++i];
        if (b === "bt") { code.push(0x40); labels.push(a); }
        else if (b === "label") {
          var at = labels.lastIndexOf(a);
          if (at < 0) throw new Error("wasm kernel " + fn.name + ": unknown label " + a);
          uleb(labels.length - 1 - at, code);
        } else if (b === "local") {
          if (!(a in idx)) throw new Error("wasm kernel " + fn.name + ": unknown local " + a);
          uleb(idx[a], code);
        } else if (b === "int") sleb(parseInt(a, 10), code);
        else if (b === "f64") f64bytes(Number(a), code);
        else if (b === "f64x2") { f64bytes(Number(a), code); f64bytes(Number(a), code); }
        else if (b === "lane") code.push(parseInt(a, 10));
        else if (b === "mem") { code.push(3); uleb(parseInt(a, 10), code); }
      }
      if (toks[i] === "end") labels.pop();
    }
    code.push(0x0b);
    var out = [];
    uleb(code.length, out);
    return out.concat(code);
  }

  // One module importing env.mem, exporting every function.
  function assembleModule(fns) {
    var b = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    function section(id, body) { b.push(id); uleb(body.length, b); for (var i = 0; i < body.length; i++) b.push(body[i]); }
    var s = [];
    pushVec(fns.map(function (f) {
      var t = [0x60];
      pushVec(f.params.map(function (p) { return [VALTYPE[p[1]]]; }), t);
      pushVec([], t);
      return t;
    }), s);
    section(1, s);
    s = []; uleb(1, s); pushStr("env", s); pushStr("mem", s); s.push(0x02, 0x00); uleb(1, s); section(2, s);
    s = []; pushVec(fns.map(function (f, i) { var o = []; uleb(i, o); return o; }), s); section(3, s);
    s = []; pushVec(fns.map(function (f, i) { var o = []; pushStr(f.name, o); o.push(0x00); uleb(i, o); return o; }), s); section(7, s);
    s = []; pushVec(fns.map(assembleBody), s); section(10, s);
    return new Uint8Array(b);
  }

  function i32s(names) { return names.map(function (n) { return [n, "i32"]; }); }
  function typed(names, t) { return names.map(function (n) { return [n, t]; }); }
  function range(n) { var a = []; for (var i = 0; i < n; i++) a.push(i); return a; }

  // exp of the f64x2 in local `v`, in place, for |v| <= 708 (callers clamp): n = round(v / ln 2)
  // by the 1.5 * 2^52 trick (whose low bits then hold n), Cody-Waite reduction to |r| <= ln2/2,
  // degree-12 Taylor polynomial by Estrin's scheme (error < 3e-16), times 2^n made from the
  // exponent bits. Constants live in locals set once per call (EXP_LOCALS / expInit), because
  // V8 rebuilds a v128.const on every use. Scratch locals: n, r2, r4 (suffix sfx).
  var EXP_C = [];
  (function () { for (var k = 0, f = 1; k <= 12; k++) { EXP_C.push(1 / f); f *= k + 1; } })();
  var EXP_CONSTS = [["xlog2e", Math.LOG2E], ["xmagic", 6755399441055744], ["xln2hi", 6.93147180369123816490e-01],
    ["xln2lo", 1.90821492927058770002e-10]].concat(EXP_C.map(function (c, k) { return ["xc" + k, c]; }));
  var EXP_LOCALS = EXP_CONSTS.map(function (c) { return [c[0], "v128"]; }).concat([["x1023", "v128"]]);
  function expInit() {
    return EXP_CONSTS.map(function (c) { return "f64x2.const " + c[1] + " local.set " + c[0]; }).join(" ") +
      " i64.const 1023 i64x2.splat local.set x1023 ";
  }
  function expInPlace(v, sfx) {
    var n = "en" + sfx, r2 = "er2" + sfx, r4 = "er4" + sfx;
    function g(x) { return "local.get " + x + " "; }
    function pair(i) { return g("xc" + (i + 1)) + g(v) + "f64x2.mul " + g("xc" + i) + "f64x2.add "; }
    function quad(i) { return pair(i) + pair(i + 2) + g(r2) + "f64x2.mul f64x2.add "; }
    return g(v) + g("xlog2e") + "f64x2.mul " + g("xmagic") + "f64x2.add local.set " + n + " " +
      g(v) + g(n) + g("xmagic") + "f64x2.sub local.tee " + r2 + " " + g("xln2hi") + "f64x2.mul f64x2.sub " +
      g(r2) + g("xln2lo") + "f64x2.mul f64x2.sub local.set " + v + " " +
      g(v) + g(v) + "f64x2.mul local.tee " + r2 + " " + g(r2) + "f64x2.mul local.set " + r4 + " " +
      quad(0) + quad(4) + g(r4) + "f64x2.mul f64x2.add " +
      quad(8) + g("xc12") + g(r4) + "f64x2.mul f64x2.add " + g(r4) + g(r4) + "f64x2.mul f64x2.mul f64x2.add " +
      g(n) + g("x1023") + "i64x2.add i32.const 52 i64x2.shl f64x2.mul local.set " + v + " ";
  }
  function expLocals(sfx) { return [["en" + sfx, "v128"], ["er2" + sfx, "v128"], ["er4" + sfx, "v128"]]; }

  // y[t][o] = (acc ? y : 0) + b[o] + sum_k x[t][k] wt[k][o], in blocks of 2 rows x 8 outputs (4
  // f64x2 accumulators per row; x[t][k] is splat). Byte offsets and strides; O even, any K.
  // Tails are handled by clamping the row / output-pair index: a duplicate computes and stores
  // the same value, and every y is read before any is written, so accumulating stays correct.
  function gemmKernel() {
    var R = 2, C = 4, L = [], r, c, names = [];
    for (r = 0; r < R; r++) for (c = 0; c < C; c++) names.push("" + r + c);
    L.push("block $td loop $tl local.get t local.get T i32.ge_s br_if $td");
    for (r = 0; r < R; r++) {
      L.push("local.get t i32.const " + r + " i32.add local.get T i32.const 1 i32.sub local.get t i32.const " + r +
        " i32.add local.get T i32.lt_s select local.set tr" +
        " local.get x local.get tr local.get xs i32.mul i32.add local.set x" + r +
        " local.get y local.get tr local.get ys i32.mul i32.add local.set y" + r);
    }
    L.push("i32.const 0 local.set o block $od loop $ol local.get o local.get Ob i32.ge_s br_if $od");
    for (c = 0; c < C; c++)
      L.push("local.get o i32.const " + 16 * c + " i32.add local.get Ob i32.const 16 i32.sub local.get o i32.const " +
        16 * c + " i32.add local.get Ob i32.lt_s select local.set q" + c);
    names.forEach(function (n) { L.push("f64x2.const 0 local.set s" + n); });
    L.push("local.get w local.set wp i32.const 0 local.set k block $kd loop $kl local.get k local.get K i32.ge_s br_if $kd");
    for (r = 0; r < R; r++) L.push("local.get x" + r + " local.get k i32.add v128.load64_splat 0 local.set a" + r);
    for (c = 0; c < C; c++) {
      L.push("local.get wp local.get q" + c + " i32.add v128.load 0 local.set v");
      for (r = 0; r < R; r++)
        L.push("local.get s" + r + c + " local.get a" + r + " local.get v f64x2.mul f64x2.add local.set s" + r + c);
    }
    L.push("local.get wp local.get ws i32.add local.set wp local.get k i32.const 8 i32.add local.set k br $kl end end");
    for (r = 0; r < R; r++) for (c = 0; c < C; c++)
      L.push("local.get s" + r + c + " local.get b local.get q" + c + " i32.add v128.load 0 f64x2.add" +
        " local.get y" + r + " local.get q" + c + " i32.add v128.load 0 f64x2.const 0 local.get acc select" +
        " f64x2.add local.set s" + r + c);
    for (r = 0; r < R; r++) for (c = 0; c < C; c++)
      L.push("local.get y" + r + " local.get q" + c + " i32.add local.get s" + r + c + " v128.store 0");
    L.push("local.get o i32.const " + 16 * C + " i32.add local.set o br $ol end end");
    L.push("local.get t i32.const " + R + " i32.add local.set t br $tl end end");
    return {
      name: "gemm", params: i32s(["x", "xs", "T", "w", "ws", "Ob", "K", "b", "y", "ys", "acc"]),
      locals: i32s(["t", "tr", "o", "k", "wp"].concat(range(R).map(function (i) { return "x" + i; }),
        range(R).map(function (i) { return "y" + i; }), range(C).map(function (i) { return "q" + i; })))
        .concat(typed(["v"].concat(range(R).map(function (i) { return "a" + i; }),
          names.map(function (s) { return "s" + s; })), "v128")),
      body: L.join(" ")
    };
  }

  // Loop `k` over 0..nb-1 bytes in steps of 16 around `inner`.
  function kloop(nb, inner) {
    return "i32.const 0 local.set k block $kd loop $kl local.get k local.get " + nb + " i32.ge_s br_if $kd " +
      inner + " local.get k i32.const 16 i32.add local.set k br $kl end end ";
  }
  function rowLoop(inner) {
    return "i32.const 0 local.set r block $rd loop $rl local.get r local.get rows i32.ge_s br_if $rd " +
      inner + " local.get r i32.const 1 i32.add local.set r br $rl end end";
  }
  function hsum(v) { return "local.get " + v + " f64x2.extract_lane 0 local.get " + v + " f64x2.extract_lane 1 f64.add "; }

  // Rows of scores, in place: p = exp(scale * (s - max)) / sum. nb = row length in bytes (even count).
  function softmaxKernel() {
    var body = expInit() + "f64x2.const -708 local.set lo local.get scale f64x2.splat local.set sc " + rowLoop(
      "local.get s local.get r local.get ss i32.mul i32.add local.set p " +
      "local.get p v128.load 0 local.set m " +
      kloop("nb", "local.get m local.get p local.get k i32.add v128.load 0 f64x2.pmax local.set m") +
      "local.get m f64x2.extract_lane 0 local.get m f64x2.extract_lane 1 f64.max f64x2.splat local.set m " +
      "f64x2.const 0 local.set sum " +
      kloop("nb", "local.get p local.get k i32.add v128.load 0 local.get m f64x2.sub local.get sc f64x2.mul " +
        "local.get lo f64x2.pmax local.set e " + expInPlace("e", "") +
        "local.get p local.get k i32.add local.get e v128.store 0 local.get sum local.get e f64x2.add local.set sum") +
      "f64.const 1 " + hsum("sum") + "f64.div f64x2.splat local.set m " +
      kloop("nb", "local.get p local.get k i32.add local.get p local.get k i32.add v128.load 0 local.get m f64x2.mul v128.store 0"));
    return {
      name: "softmax", params: i32s(["s", "rows", "nb", "ss"]).concat([["scale", "f64"]]),
      locals: i32s(["r", "k", "p"]).concat(typed(["m", "sum", "e", "lo", "sc"], "v128"), expLocals(""), EXP_LOCALS),
      body: body
    };
  }

  // out[r][i] = gelu_tanh(g[r][i]) * g[r][f + i] with gelu_tanh(z) = z / (1 + exp(-2 c (z + 0.044715 z^3))),
  // the same function as 0.5 z (1 + tanh(c (z + 0.044715 z^3))).
  function gegluKernel() {
    var body = expInit() + "f64x2.const -708 local.set lo f64x2.const 708 local.set hi f64x2.const 0.044715 local.set a " +
      "f64x2.const " + (-2 * GELU_C) + " local.set c f64x2.const 1 local.set one " + rowLoop(
      "local.get g local.get r local.get gs i32.mul i32.add local.set gp " +
      "local.get out local.get r local.get os i32.mul i32.add local.set op " +
      kloop("fb", "local.get gp local.get k i32.add v128.load 0 local.set z " +
        "local.get z local.get z f64x2.mul local.get z f64x2.mul local.get a f64x2.mul local.get z f64x2.add " +
        "local.get c f64x2.mul local.get lo f64x2.pmax local.get hi f64x2.pmin local.set e " + expInPlace("e", "") +
        "local.get op local.get k i32.add local.get z local.get one local.get e f64x2.add f64x2.div " +
        "local.get gp local.get fb i32.add local.get k i32.add v128.load 0 f64x2.mul v128.store 0"));
    return {
      name: "geglu", params: i32s(["g", "rows", "fb", "gs", "out", "os"]),
      locals: i32s(["r", "k", "gp", "op"]).concat(typed(["z", "e", "lo", "hi", "a", "c", "one"], "v128"),
        expLocals(""), EXP_LOCALS),
      body: body
    };
  }

  function layernormKernel() {
    var body = rowLoop(
      "local.get x local.get r local.get xs i32.mul i32.add local.set xp " +
      "local.get y local.get r local.get ys i32.mul i32.add local.set yp " +
      "f64x2.const 0 local.set a " +
      kloop("db", "local.get a local.get xp local.get k i32.add v128.load 0 f64x2.add local.set a") +
      hsum("a") + "local.get dinv f64.mul f64x2.splat local.set m " +
      "f64x2.const 0 local.set a " +
      kloop("db", "local.get xp local.get k i32.add v128.load 0 local.get m f64x2.sub local.set c " +
        "local.get a local.get c local.get c f64x2.mul f64x2.add local.set a") +
      "f64.const 1 " + hsum("a") + "local.get dinv f64.mul f64.const " + LN_EPS + " f64.add f64.sqrt f64.div " +
      "f64x2.splat local.set c " +
      kloop("db", "local.get yp local.get k i32.add local.get xp local.get k i32.add v128.load 0 local.get m f64x2.sub " +
        "local.get c f64x2.mul local.get sc local.get k i32.add v128.load 0 f64x2.mul " +
        "local.get bi local.get k i32.add v128.load 0 f64x2.add v128.store 0"));
    return {
      name: "layernorm", params: i32s(["x", "rows", "db", "xs", "sc", "bi", "y", "ys"]).concat([["dinv", "f64"]]),
      locals: i32s(["r", "k", "xp", "yp"]).concat(typed(["a", "m", "c"], "v128")), body: body
    };
  }

  var wasmModule = null, wasmError = null;
  function getWasmModule() {
    if (wasmModule || wasmError) return wasmModule;
    try {
      if (typeof WebAssembly !== "object") throw new Error("no WebAssembly");
      var bytes = assembleModule([gemmKernel(), softmaxKernel(), gegluKernel(), layernormKernel()]);
      if (!WebAssembly.validate(bytes)) throw new Error("WebAssembly SIMD is not supported here");
      wasmModule = new WebAssembly.Module(bytes);
    } catch (e) {
      wasmError = e;
    }
    return wasmModule;
  }

  // The WebAssembly kernels behind the JS kernels' interface (element offsets -> bytes).
  function wasmKernels(inst) {
    var e = inst.exports;
    return {
      gemm: function (x, xs, T, wt, ws, O, K, b, y, ys, acc) {
        e.gemm(x * 8, xs * 8, T, wt * 8, ws * 8, O * 8, K * 8, b * 8, y * 8, ys * 8, acc);
      },
      softmax: function (s, rows, n, ss, scale) { e.softmax(s * 8, rows, n * 8, ss * 8, scale); },
      geglu: function (g, rows, f, gs, out, os) { e.geglu(g * 8, rows, f * 8, gs * 8, out * 8, os * 8); },
      layernorm: function (x, rows, d, xs, sc, bi, y, ys) {
        e.layernorm(x * 8, rows, d * 8, xs * 8, sc * 8, bi * 8, y * 8, ys * 8, 1 / d);
      }
    };
  }

  // ------------------------------------------------------------------ the engine
  // options: requireBrowserSizes (refuse sizes other than 48/4/3/96), backend ("auto" | "wasm" | "js").
  function Engine(params, options) {
    options = options || {};
    var w = this.w = loadParams(params, options);
    var d = w.d, f = w.f, H = w.h, hs = d / H;
    this.capacity = 0;
    var want = options.backend || "auto";
    var canWasm = hs % 2 === 0 && f % 2 === 0 && !!getWasmModule();
    if (want === "wasm" && !canWasm)
      throw new Error("WebAssembly backend unavailable: " + (wasmError ? wasmError.message : "odd head or FFN width"));
    this.backend = want === "js" || !canWasm ? "js" : "wasm";

    // Weight region: offsets into the heap, in elements.
    var parts = [], size = 0;
    function put(arr) { var off = size; parts.push([off, arr]); size += arr.length + (arr.length & 1); return off; }
    function mat(rows, cols, fn) { var a = new Float64Array(rows * cols); for (var i = 0; i < rows; i++) for (var j = 0; j < cols; j++) a[i * cols + j] = fn(i, j); return a; }

    // Token embeddings as [d][6] matrices applied to [in0, in1, in2, in3, 1, 0].
    var projs = [null, w.ctx, w.pred, w.boid], pcols = [0, 2, 4, 4];
    var base = [new Float64Array(d), w.type[1], w.type[2], w.type[3]];
    for (var i = 0; i < d; i++) base[0][i] = w.cls[i] + w.type[0][i];
    function proj(ty, i, c) { return c < pcols[ty] ? projs[ty][i * pcols[ty] + c] : 0; }
    // Every matrix is stored transposed ([in][out]), the layout the product kernels stream.
    this.embed = [0, 1, 2, 3].map(function (ty) {
      return put(mat(6, d, function (c, i) { return c < 4 ? proj(ty, i, c) : c === 4 ? base[ty][i] : 0; }));
    });

    this.layers = w.layers.map(function (L, l) {
      var gub = new Float64Array(2 * f);
      gub.set(L.gB); gub.set(L.uB, f);
      var o = {
        ln1s: put(L.ln1s), ln1b: put(L.ln1b), qkvB: put(L.qkvB), oB: put(L.oB), ln2s: put(L.ln2s), ln2b: put(L.ln2b),
        guB: put(gub), dB: put(L.dB),
        qkvWT: put(mat(d, 3 * d, function (i, r) { return L.qkvW[r * d + i]; })),
        oWT: put(mat(d, d, function (i, r) { return L.oW[r * d + i]; })),
        guWT: put(mat(d, 2 * f, function (i, r) { return r < f ? L.gW[r * d + i] : L.uW[(r - f) * d + i]; })),
        dWT: put(mat(f, d, function (i, r) { return L.dW[r * f + i]; }))
      };
      if (l === w.L - 1) o.wk = put(L.qkvW.subarray(d * d, 2 * d * d)); // W_k as is: [out][in]
      return o;
    });

    // Layer 1 before its LayerNorm: x = P in + t (per token type), so x - mean(x) = Pc in + tc with
    // the column-centred P and t. Hence qkv = W_qkv (s * (x - mean) / sigma) + (W_qkv b + b_qkv)
    //                                      = M [in / sigma, 1 / sigma, 0] + n0,   M = W_qkv diag(s) [Pc | tc | 0].
    this.firstTrick = w.L > 1;
    if (this.firstTrick) {
      var L0 = w.layers[0];
      var centred = [0, 1, 2, 3].map(function (ty) {
        var A = mat(d, 5, function (i, c) { return c < 4 ? proj(ty, i, c) : base[ty][i]; });
        for (var c = 0; c < 5; c++) {
          var m = 0;
          for (var i = 0; i < d; i++) m += A[i * 5 + c];
          m /= d;
          for (i = 0; i < d; i++) A[i * 5 + c] -= m;
        }
        return A;
      });
      this.firstM = centred.map(function (A) {
        return put(mat(6, 3 * d, function (c, r) {
          if (c === 5) return 0;
          var s = 0;
          for (var i = 0; i < d; i++) s += L0.qkvW[r * d + i] * L0.ln1s[i] * A[i * 5 + c];
          return s;
        }));
      });
      this.firstN = put(mat(3 * d, 1, function (r) {
        var s = L0.qkvB[r];
        for (var i = 0; i < d; i++) s += L0.qkvW[r * d + i] * L0.ln1b[i];
        return s;
      }));
    }
    this.outWT = put(mat(d, 2, function (i, o) { return w.outW[o * d + i]; }));
    this.outB = put(w.outB);
    this.weightSize = size;
    this.parts = parts;
    this.memory = null;
    this.F = null;
    this._ensure(3 + 50);
    this.parts = null; // copied into the heap; growing keeps the weight region
  }

  // Lay out activations for up to T tokens (rounded up to even) after the weights; grow the heap.
  Engine.prototype._ensure = function (T) {
    if (T <= this.capacity) return;
    var w = this.w, d = w.d, f = w.f, H = w.h;
    var Tc = T + (T & 1), off = this.weightSize;
    function take(n) { var o = off; off += n + (n & 1); return o; }
    var a = this.act = {
      IN: take(Tc * 6), x: take(Tc * d), hn: take(Tc * d), qkv: take(Tc * 3 * d), S: take(Math.max(Tc, H) * Tc),
      VT: take(d * Tc), KT: take(d * Tc), att: take(Tc * d), GU: take(Tc * 2 * f), G: take(Tc * f), q: take(d), U: take(H * d),
      Z: take(H * d), out: take(2), zeros: take(Math.max(3 * d, 2 * f, Tc)), sigma: take(Tc)
    };
    var bytes = off * 8;
    if (this.backend === "wasm") {
      if (!this.memory) {
        this.memory = new WebAssembly.Memory({ initial: Math.ceil(bytes / 65536) });
        this.kernels = wasmKernels(new WebAssembly.Instance(wasmModule, { env: { mem: this.memory } }));
      } else if (this.memory.buffer.byteLength < bytes) {
        this.memory.grow(Math.ceil((bytes - this.memory.buffer.byteLength) / 65536));
      }
      this.F = new Float64Array(this.memory.buffer);
    } else {
      var F = new Float64Array(off);
      if (this.F) F.set(this.F.subarray(0, this.weightSize));
      this.F = F;
      this.kernels = jsKernels(F, Math.max(3 * d, 2 * f, Tc));
    }
    if (this.parts) {
      var heap = this.F;
      this.parts.forEach(function (p) { heap.set(p[1], p[0]); });
    }
    this.F.fill(0, a.zeros, a.zeros + Math.max(3 * d, 2 * f, Tc));
    this.capacity = Tc;
  };

  // One structured input {context, predator, boids: [...]} -> [x, y] in [-1, 1].
  Engine.prototype.forward = function (input) {
    var boids = input.boids || [], nb = boids.length;
    this._ensure(3 + nb);
    var k, c = input.context, p = input.predator;
    this._setInput(0, 0, 0, 0, 0);
    this._setInput(1, c.canvasWidth, c.canvasHeight, 0, 0);
    this._setInput(2, p.velX, p.velY, 0, 0);
    for (k = 0; k < nb; k++) {
      var b = boids[k];
      this._setInput(3 + k, b.relX, b.relY, b.velX, b.velY);
    }
    return this._run(nb);
  };

  // The same from flat numbers: ctx [W/D, H/D], pred [velX, velY], boids [relX, relY, velX, velY] x n.
  Engine.prototype.forwardFlat = function (cw, ch, pvx, pvy, boids, n) {
    this._ensure(3 + n);
    this._setInput(0, 0, 0, 0, 0);
    this._setInput(1, cw, ch, 0, 0);
    this._setInput(2, pvx, pvy, 0, 0);
    for (var k = 0; k < n; k++) this._setInput(3 + k, boids[4 * k], boids[4 * k + 1], boids[4 * k + 2], boids[4 * k + 3]);
    return this._run(n);
  };

  Engine.prototype._setInput = function (t, a, b, c, e) {
    var F = this.F, o = this.act.IN + 6 * t;
    F[o] = a; F[o + 1] = b; F[o + 2] = c; F[o + 3] = e; F[o + 4] = 1; F[o + 5] = 0;
  };

  Engine.prototype._run = function (nb) {
    var w = this.w, d = w.d, H = w.h, hs = d / H, f = w.f, T = 3 + nb, Tp = T + (T & 1), Tc = this.capacity;
    var F = this.F, K = this.kernels, a = this.act, Z0 = a.zeros, scale = 1 / Math.sqrt(hs);
    var i, j, t, h, l;
    // Embeddings: one small product per token type.
    for (t = 0; t < 3; t++) K.gemm(a.IN + 6 * t, 6, 1, this.embed[t], d, d, 6, Z0, a.x + t * d, d, 0);
    if (nb) K.gemm(a.IN + 18, 6, nb, this.embed[3], d, d, 6, Z0, a.x + 3 * d, d, 0);

    for (l = 0; l < w.L; l++) {
      var L = this.layers[l];
      if (l === w.L - 1) { this._lastLayer(L, T, Tp); break; }
      if (l === 0 && this.firstTrick) {
        // sigma of every token, then qkv = M [in / sigma, 1 / sigma, 0] + n0 (see the constructor).
        for (t = 0; t < T; t++) {
          var xo = a.x + t * d, mean = 0, v = 0;
          for (i = 0; i < d; i++) mean += F[xo + i];
          mean /= d;
          for (i = 0; i < d; i++) { var cc = F[xo + i] - mean; v += cc * cc; }
          var inv = 1 / Math.sqrt(v / d + LN_EPS), io = a.IN + 6 * t;
          for (i = 0; i < 5; i++) F[io + i] *= inv;
        }
        for (t = 0; t < 3; t++) K.gemm(a.IN + 6 * t, 6, 1, this.firstM[t], 3 * d, 3 * d, 6, this.firstN, a.qkv + 3 * d * t, 3 * d, 0);
        if (nb) K.gemm(a.IN + 18, 6, nb, this.firstM[3], 3 * d, 3 * d, 6, this.firstN, a.qkv + 9 * d, 3 * d, 0);
      } else {
        K.layernorm(a.x, T, d, d, L.ln1s, L.ln1b, a.hn, d);
        K.gemm(a.hn, d, T, L.qkvWT, 3 * d, 3 * d, d, L.qkvB, a.qkv, 3 * d, 0);
      }
      for (h = 0; h < H; h++) {
        var qo = a.qkv + h * hs, ko = qo + d;
        for (j = 0; j < T; j++) for (i = 0; i < hs; i++) F[a.KT + i * Tc + j] = F[ko + j * 3 * d + i];  // K_h^T
        if (T & 1) for (i = 0; i < hs; i++) F[a.KT + i * Tc + T] = 0;
        K.gemm(qo, 3 * d, T, a.KT, Tc, Tp, hs, Z0, a.S, Tc, 0);                       // scores [T][Tp]
        if (T & 1) for (t = 0; t < T; t++) F[a.S + t * Tc + T] = PAD_SCORE;
        K.softmax(a.S, T, Tp, Tc, scale);
        K.gemm(a.S, Tc, T, qo + 2 * d, 3 * d, hs, T, Z0, a.att + h * hs, d, 0);      // P V_h
      }
      K.gemm(a.att, d, T, L.oWT, d, d, d, L.oB, a.x, d, 1);
      this._ffn(L, T);
    }
    K.gemm(a.x, d, 1, this.outWT, 2, 2, d, this.outB, a.out, 2, 0);
    return [Math.tanh(F[a.out]), Math.tanh(F[a.out + 1])];
  };

  Engine.prototype._ffn = function (L, rows) {
    var w = this.w, d = w.d, f = w.f, a = this.act, K = this.kernels;
    K.layernorm(a.x, rows, d, d, L.ln2s, L.ln2b, a.hn, d);
    K.gemm(a.hn, d, rows, L.guWT, 2 * f, 2 * f, d, L.guB, a.GU, 2 * f, 0);
    K.geglu(a.GU, rows, f, 2 * f, a.G, f);
    K.gemm(a.G, f, rows, L.dWT, d, d, f, L.dB, a.x, d, 1);
  };

  // Last block, [CLS] row only. With n = LN1(x): score_hj = q_h . (Wk_h n_j + bk_h) =
  // (Wk_h^T q_h) . n_j + const (the constant cancels in the softmax), and
  // sum_j p_hj (Wv_h n_j + bv_h) = Wv_h (sum_j p_hj n_j) + bv_h.
  Engine.prototype._lastLayer = function (L, T, Tp) {
    var w = this.w, d = w.d, H = w.h, hs = d / H, F = this.F, K = this.kernels, a = this.act;
    var Tc = this.capacity, Z0 = a.zeros, h, i, j;
    K.layernorm(a.x, T, d, d, L.ln1s, L.ln1b, a.hn, d);
    K.gemm(a.hn, d, 1, L.qkvWT, 3 * d, d, d, L.qkvB, a.q, d, 0);                      // q of [CLS]
    for (h = 0; h < H; h++) K.gemm(a.q + h * hs, hs, 1, L.wk + h * hs * d, d, d, hs, Z0, a.U + h * d, d, 0);
    for (j = 0; j < T; j++) for (i = 0; i < d; i++) F[a.VT + i * Tc + j] = F[a.hn + j * d + i];  // n^T
    if (T & 1) for (i = 0; i < d; i++) F[a.VT + i * Tc + T] = 0;
    K.gemm(a.U, d, H, a.VT, Tc, Tp, d, Z0, a.S, Tc, 0);                                // scores [H][Tp]
    if (T & 1) for (h = 0; h < H; h++) F[a.S + h * Tc + T] = PAD_SCORE;
    K.softmax(a.S, H, Tp, Tc, 1 / Math.sqrt(hs));
    K.gemm(a.S, Tc, H, a.hn, d, d, T, Z0, a.Z, d, 0);                                  // [H][d]
    for (h = 0; h < H; h++)
      K.gemm(a.Z + h * d, d, 1, L.qkvWT + 2 * d + h * hs, 3 * d, hs, d, L.qkvB + 2 * d + h * hs, a.att + h * hs, d, 0);
    K.gemm(a.att, d, 1, L.oWT, d, d, d, L.oB, a.x, d, 1);
    this._ffn(L, 1);
  };

  // [CLS]'s attention in the last block after the latest forward: head-mean weight of token j.
  Engine.prototype.clsAttention = function (j) {
    var H = this.w.h, s = 0;
    for (var h = 0; h < H; h++) s += this.F[this.act.S + h * this.capacity + j];
    return s / H;
  };

  return {
    Engine: Engine, loadParams: loadParams, BROWSER_SIZES: BROWSER_SIZES,
    wasmAvailable: function () { return !!getWasmModule(); },
    wasmError: function () { return wasmError ? String(wasmError.message || wasmError) : null; }
  };
});

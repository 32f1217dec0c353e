#!/usr/bin/env node
/*
 * Run the shipped engine under Node.
 *   node run_node.js WEIGHTS INPUTS.json     -> JSON array of [x, y], one per input
 *   node run_node.js WEIGHTS --bench         -> forwards per second at 0, 10 and 50 boids
 * Add --backend js|wasm to force the engine's kernels (default: wasm where available).
 * WEIGHTS is a model.js (window.TRANSFORMER_PARAMS = ...) or a .json file.
 */
"use strict";
const fs = require("fs");
const vm = require("vm");
const { Engine } = require("./transformer.js");

// The text of a file as a browser reads a script: UTF-16 by its byte order mark (Windows PowerShell's `>`
// writes one), else UTF-8.
function readScript(path) {
  const b = fs.readFileSync(path);
  if (b[0] === 0xff && b[1] === 0xfe) return b.toString("utf16le", 2);
  if (b[0] === 0xfe && b[1] === 0xff) return Buffer.from(b.subarray(2, b.length - (b.length & 1))).swap16().toString("utf16le");
  return b.toString("utf8").replace(/^\ufeff/, "");
}

function loadWeights(path) {
  const src = readScript(path);
  if (path.toLowerCase().endsWith(".json")) return JSON.parse(src);   // .JSON too, as write_weights takes it
  const sandbox = {};
  sandbox.window = sandbox.self = sandbox;   // as in a page: window, self and the global object are one
  vm.runInNewContext(src, sandbox, { filename: path });
  const p = sandbox.TRANSFORMER_PARAMS;
  if (!p) throw new Error(path + " does not define window.TRANSFORMER_PARAMS");
  return p;
}

function sample(nb, seed) {
  let s = seed;
  const r = () => { s = (s * 1103515245 + 12345) % 2147483648; return s / 2147483648 * 2 - 1; };
  const boids = [];
  for (let k = 0; k < nb; k++) boids.push({ relX: r() * 0.5, relY: r() * 0.5, velX: r(), velY: r() });
  return { context: { canvasWidth: 1.92, canvasHeight: 1.08 }, predator: { velX: r(), velY: r() }, boids };
}

function main() {
  const argv = process.argv.slice(2);
  let backend = "auto";
  const bi = argv.indexOf("--backend");
  if (bi >= 0) { backend = argv[bi + 1]; argv.splice(bi, 2); }
  const [weights, arg] = argv;
  if (!weights || !arg || !["auto", "js", "wasm"].includes(backend)) {
    console.error("usage: node run_node.js WEIGHTS (INPUTS.json | --bench) [--backend js|wasm]");
    process.exit(2);
  }
  const engine = new Engine(loadWeights(weights), { backend });
  if (arg === "--bench") {
    console.log(`backend: ${engine.backend}`);
    const out = {};
    for (const nb of [0, 10, 50]) {
      const x = sample(nb, 7);
      for (let i = 0; i < 200; i++) engine.forward(x);
      let n = 0;
      const t0 = process.hrtime.bigint();
      let dt = 0;
      while (dt < 0.5) {
        for (let i = 0; i < 100; i++) engine.forward(x);
        n += 100;
        dt = Number(process.hrtime.bigint() - t0) / 1e9;
      }
      out[nb] = n / dt;
      console.log(`${nb} boids: ${(n / dt).toFixed(0)} forwards/s (${(1000 * dt / n).toFixed(4)} ms each)`);
    }
    return;
  }
  const inputs = JSON.parse(fs.readFileSync(arg, "utf8"));
  process.stdout.write(JSON.stringify(inputs.map((x) => engine.forward(x))));
}

if (require.main === module) main();
module.exports = { loadWeights };

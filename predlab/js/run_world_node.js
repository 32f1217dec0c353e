#!/usr/bin/env node
/*
 * Step world.js under Node, for tests against predlab.sim.World.
 *   node run_world_node.js CASE.json            -> the case's actions drive the predator
 *   node run_world_node.js CASE.json WEIGHTS    -> a model.js / .json drives it, as the page does
 * CASE: {state: {width, height, pos, vel, alive, predPos, predVel}, actions: [[ax, ay], ...]}; with
 * WEIGHTS, {state, frames: N} instead (the model's action each frame, (0, 0) once no boid is left).
 * Prints {frames: [{state, caught, observation, action}, ...]}, one entry per frame.
 */
"use strict";
const fs = require("fs");
const { World } = require("./world.js");

function main() {
  const [path, weights] = process.argv.slice(2);
  if (!path) {
    console.error("usage: node run_world_node.js CASE.json [WEIGHTS]");
    process.exit(2);
  }
  const c = JSON.parse(fs.readFileSync(path, "utf8"));
  const world = new World(c.state.width, c.state.height, c.state.pos.length);
  world.setState(c.state);
  let act = (f) => c.actions[f];
  const count = weights ? c.frames : c.actions.length;
  if (weights) {
    if (!Number.isInteger(c.frames) || c.frames < 0) {
      console.error("run_world_node.js: with WEIGHTS, CASE needs frames: a whole number of frames to run");
      process.exit(2);
    }
    const { Engine } = require("./transformer.js");
    const { loadWeights } = require("./run_node.js");
    const engine = new Engine(loadWeights(weights));
    act = () => {
      const n = world.observeFlat();
      return n ? world.modelAction(engine, n) : [0, 0];
    };
  }
  const frames = [];
  for (let f = 0; f < count; f++) {
    const action = act(f);
    const caught = world.step(action);
    frames.push({ state: world.getState(), caught, observation: world.observe(), action });
  }
  process.stdout.write(JSON.stringify({ frames }));
}

main();

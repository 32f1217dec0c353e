#!/usr/bin/env node
/*
 * Step world.js under Node, for tests against predlab.sim.World.
 *   node run_world_node.js CASE.json
 * CASE: {state: {width, height, pos, vel, alive, predPos, predVel}, actions: [[ax, ay], ...]}
 * Prints {frames: [{state, caught, observation}, ...]}, one entry per action.
 */
"use strict";
const fs = require("fs");
const { World } = require("./world.js");

function main() {
  const path = process.argv[2];
  if (!path) {
    console.error("usage: node run_world_node.js CASE.json");
    process.exit(2);
  }
  const c = JSON.parse(fs.readFileSync(path, "utf8"));
  const world = new World(c.state.width, c.state.height, c.state.pos.length);
  world.setState(c.state);
  const frames = c.actions.map((a) => {
    const caught = world.step(a);
    return { state: world.getState(), caught, observation: world.observe() };
  });
  process.stdout.write(JSON.stringify({ frames }));
}

main();

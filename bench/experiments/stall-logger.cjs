// Preloaded into a gateway by bench/experiments/tail.mjs (`node -r stall-logger.cjs …`): a 1 ms timer that writes to
// stderr every gap over 8 ms between its ticks (a stall of the main thread: a collection, a long task), with its time.
'use strict';
let last = performance.now();
setInterval(() => {
  const now = performance.now();
  if (now - last > 8) process.stderr.write(`STALL ${(now - last).toFixed(1)} ms at ${Date.now()} (${Math.round(now)} ms since start)\n`);
  last = now;
}, 1).unref();

#!/usr/bin/env -S node --max-semi-space-size=8
// The gateway's entry point. Token calls (C_Sign, C_Verify) run on the libuv thread pool, whose size is read once,
// when the pool first starts: in an ES module that is already too late (measured: loading the modules starts it),
// so this CommonJS launcher sets it first, then loads the gateway. An operator's own value wins.
// --max-semi-space-size=8 (V8's young generation: 2 × 8 MB instead of 2 × 16 MB) is a flag of node itself, read before
// any script runs: the shebang, `npm start`, the systemd unit and the container pass it (bench/README.md, "Memory":
// peak PSS at 1,000 req/s 157–164 MB against 169–181 MB, no more CPU per request).
//
//   hsm-gateway [serve] [--config <file>]   the gateway (no command, or "serve")
//   hsm-gateway <command> …                 the admin CLI (dist/cli/admin.js): hsm-gateway --help lists the commands
'use strict';
process.env.UV_THREADPOOL_SIZE ??= '16';

const args = process.argv.slice(2);
/** The first argument that is neither an option nor the value of --config: the command, if any. */
function commandOf(argv) {
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--') return undefined;
    if (argv[i] === '--config') i++;
    else if (!argv[i].startsWith('-')) return argv[i];
  }
  return undefined;
}
const command = commandOf(args);
const help = args.includes('--help') || args.includes('-h');

if (!help && (command === undefined || command === 'serve')) {
  import('../dist/main.js');
} else {
  import('../dist/cli/admin.js').then((cli) => cli.main(args));
}

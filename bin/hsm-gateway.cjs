#!/usr/bin/env node
// The gateway's entry point. Token calls (C_Sign, C_Verify) run on the libuv thread pool, whose size is read once,
// when the pool first starts: in an ES module that is already too late (measured: loading the modules starts it),
// so this CommonJS launcher sets it first, then loads the gateway. An operator's own value wins.
'use strict';
process.env.UV_THREADPOOL_SIZE ??= '16';
import('../dist/main.js');

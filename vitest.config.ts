import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Each test file gets its own process: PKCS#11 state (C_Initialize, SOFTHSM2_CONF) is per process.
    pool: 'forks',
    // One file at a time: the throttling and shutdown tests measure rates and timing, and the 2-core machine
    // would otherwise share its cores between them and the SoftHSM-heavy files.
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    reporters: ['default'],
  },
});

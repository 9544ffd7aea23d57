// The node:cluster primary (server.workers > 1) serves nothing: it must not load the PKCS#11 binding (pkcs11js, a
// native addon; see src/cluster.ts). It loads main.ts and cluster.ts with their runtime imports: type-only imports are
// erased (tsPreCompilationDeps: false), and dynamic imports (server.ts, the demo, hsm/ckr.ts on a failed start) run in
// workers and single processes only, so they are not followed.
// npm run lint:deps cruises src/main.ts with this; test/integration/cluster.test.ts checks the running primary too.
const { options } = require('./.dependency-cruiser.cjs');

module.exports = {
  forbidden: [
    {
      name: 'cluster-primary-without-pkcs11',
      severity: 'error',
      comment:
        'main.ts or cluster.ts reaches pkcs11js through a static import, so the cluster primary loads it: import the module lazily (await import) on a path the primary never takes, or move what the primary needs out of it.',
      from: { path: '^src/(main|cluster)\\.ts$' },
      to: { path: '^node_modules/pkcs11js/', reachable: true },
    },
  ],
  options: {
    ...options,
    tsPreCompilationDeps: false,
    doNotFollow: { path: 'node_modules', dependencyTypes: ['dynamic-import'] },
    exclude: { dynamic: true },
  },
};

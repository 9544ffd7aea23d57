// The shape of src/ (npm run lint:deps, part of npm test): no import cycles, and each layer of a request's way through
// the gateway imports only the layers below it (README "Layout"):
//
//   http (parse, authenticate) → throttle → operations → keys (registry) → signing (plan, encode) → hsm (token)
//
// The entry points (main, server, cluster, the CLI, the demo) put the layers together; no layer imports them.
// `tsPreCompilationDeps`: type-only imports count too — a layer that needs another's types depends on it.
// The cluster primary's own check (no pkcs11js) is in .dependency-cruiser.primary.cjs: it follows runtime imports only.

/** A path regex for these folders of src/. */
const layers = (...names) => `^src/(${names.join('|')})/`;
/** What only the entry points (start-up, the admin CLI, the demo) may import. */
const ENTRY_POINTS = '^src/(cli/|demo/|main\\.ts$|server\\.ts$|cluster\\.ts$|open-tokens\\.ts$)';

module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      severity: 'error',
      comment: 'An import cycle: modules that cannot be read, tested or loaded one without the other (and ESM may see one half uninitialised).',
      from: { path: '^src/' },
      to: { circular: true },
    },
    {
      name: 'hsm-is-the-bottom',
      severity: 'error',
      comment: 'src/hsm speaks PKCS#11 and throws typed errors; it never sees a request, an operation, the key registry or the limiter.',
      from: { path: layers('hsm') },
      to: { path: [layers('http', 'operations', 'keys', 'throttle'), ENTRY_POINTS] },
    },
    {
      name: 'signing-below-operations',
      severity: 'error',
      comment: 'src/signing plans, encodes and signs through the token; it knows nothing of HTTP, operations or throttling.',
      from: { path: layers('signing') },
      to: { path: [layers('http', 'operations', 'throttle'), ENTRY_POINTS] },
    },
    {
      name: 'keys-below-operations',
      severity: 'error',
      comment: 'src/keys (registry, lifecycle) throws typed errors (keys/errors.ts) that the operations map; it never sees HTTP or an operation.',
      from: { path: layers('keys') },
      to: { path: [layers('http', 'operations'), ENTRY_POINTS] },
    },
    {
      name: 'http-not-to-hsm',
      severity: 'error',
      comment:
        'The HTTP layer never sees a PKCS#11 handle or an HSM error: HSM errors reach the client through the operations’ error mapping (operations/errors.ts). No exception, app.ts included.',
      from: { path: layers('http') },
      to: { path: layers('hsm') },
    },
    {
      name: 'operations-not-to-app',
      severity: 'error',
      comment: 'An operation gets params and an OperationContext, never the express app or a request: it can be called without HTTP.',
      from: { path: layers('operations') },
      to: { path: ['^src/http/app\\.ts$', '^node_modules/express/'] },
    },
    {
      name: 'library-not-to-entry-points',
      severity: 'error',
      comment: 'The layers are what the entry points (main, server, cluster, CLI, demo) put together; they never import them.',
      from: { path: layers('config', 'http', 'operations', 'keys', 'signing', 'hsm', 'throttle', 'observability') },
      to: { path: ENTRY_POINTS },
    },
    {
      name: 'src-not-to-test',
      severity: 'error',
      comment: 'Nothing the gateway ships imports test code.',
      from: { path: '^src/' },
      to: { path: '^test/' },
    },
    {
      name: 'src-not-to-dev-dependencies',
      severity: 'error',
      comment: 'A devDependency is not installed where the gateway runs (npm ci --omit=dev); type-only imports are erased.',
      from: { path: '^src/' },
      to: { dependencyTypes: ['npm-dev'], dependencyTypesNot: ['type-only'] },
    },
    {
      name: 'not-to-unresolvable',
      severity: 'error',
      comment: 'An import that resolves to nothing.',
      from: { path: '^src/' },
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    // Sources import './x.js' for ./x.ts (NodeNext): resolve the .ts first.
    enhancedResolveOptions: { extensions: ['.ts', '.js', '.cjs', '.mjs', '.json', '.node'], exportsFields: ['exports'], conditionNames: ['import', 'require', 'node', 'default', 'types'] },
    progress: { type: 'none' },
  },
};

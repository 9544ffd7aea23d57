import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parse, stringify } from 'yaml';
import { bootstrapDemo, type DemoInfo } from '../../src/demo/bootstrap.js';
import { freePort, startGatewayProcess, type Running } from './processes.js';
import type { Credentials } from './sdk.js';
import { SOFTHSM_MODULE } from './test-gateway.js';

const BARRIER = pathToFileURL(resolve(import.meta.dirname, 'cas-barrier.mjs')).href;

export interface BarrierReplicas {
  home: string;
  demo: DemoInfo;
  /** The barrier's directory (cas-barrier.mjs writes its files there). */
  barrier: string;
  replicas: Array<{ run: Running; creds: Credentials }>;
  /** Numbers the barrier's next round (both processes' next changes meet in round `n`). */
  setRound(n: number): void;
  stop(): Promise<void>;
}

/**
 * Two gateway processes on one SoftHSMv2 demo token and no Redis, each with test/helpers/cas-barrier.mjs loaded
 * (roles `first` and `second`, `env` added to both): the registry changes meet only on the token.
 */
export function startBarrierReplicas(prefix: string, env: Record<string, string>): Promise<BarrierReplicas> {
  return startReplicas(prefix, env, true);
}

/**
 * Two gateway processes on one SoftHSMv2 demo token and no Redis, as configured by default: their registry changes
 * take turns under the lock file in the token directory (src/keys/host-lock.ts). No barrier: `setRound` does nothing.
 */
export function startLockedReplicas(prefix: string): Promise<BarrierReplicas> {
  return startReplicas(prefix, {}, false);
}

async function startReplicas(prefix: string, env: Record<string, string>, barrierLoaded: boolean): Promise<BarrierReplicas> {
  const home = mkdtempSync(join(tmpdir(), prefix));
  const demo = bootstrapDemo({ home, modulePath: SOFTHSM_MODULE, host: '127.0.0.1', port: 0 });
  const secret = readFileSync(demo.accessKeySecretFile, 'utf8').trim();
  const config = parse(readFileSync(demo.configFile, 'utf8'));
  config.logging = { level: 'warn' };
  // What the barrier's replicas test is the compare-and-swap: the lock file would serialize their changes before it decides.
  if (barrierLoaded) config.registry = { ...config.registry, softhsmLock: false };
  const replicaConfig = join(home, 'replica.yaml');
  writeFileSync(replicaConfig, stringify(config));
  const barrier = join(home, 'barrier');
  mkdirSync(barrier);
  const replicas: BarrierReplicas['replicas'] = [];
  for (const role of ['first', 'second']) {
    const port = await freePort();
    replicas.push({
      run: await startGatewayProcess({
        HSM_GATEWAY_CONFIG: replicaConfig,
        HSM_GATEWAY_PORT: String(port),
        ...(barrierLoaded ? { NODE_OPTIONS: `--import=${BARRIER}`, HSMGW_CAS_BARRIER_DIR: barrier, HSMGW_CAS_ROLE: role } : {}),
        ...env,
      }),
      creds: { endpoint: `127.0.0.1:${port}`, accessKeyId: demo.accessKeyId, accessKeySecret: secret },
    });
  }
  return {
    home,
    demo,
    barrier,
    replicas,
    setRound: (n) => writeFileSync(join(barrier, 'round'), String(n)),
    async stop() {
      // The replicas log warnings and errors only: shown in the test's output, they explain a 503 after the fact.
      replicas.forEach((r, i) => {
        const lines = r.run.output().split('\n').filter((line) => line.includes('"level":"error"') || (line.includes('"level":"warn"') && !line.includes('re-initialized to see objects')));
        if (lines.length > 0) console.log(`replica ${'AB'[i]}: ${lines.length} warning/error lines\n${lines.slice(-40).join('\n')}`);
      });
      for (const r of replicas) await r.run.stop();
      rmSync(home, { recursive: true, force: true });
    },
  };
}

/** 'ok', or the error's Code and HTTP status (the SDK puts the status in its message: "code: 409, …"). */
export const outcomeOf = (p: Promise<unknown>): Promise<string> =>
  p.then(
    () => 'ok',
    (e: { message: string; code?: string; data?: { Code?: string } }) => `${e.data?.Code ?? e.code} ${/code: (\d{3})/.exec(e.message)?.[1]}`,
  );

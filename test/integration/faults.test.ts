import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { bootstrapDemo } from '../../src/demo/bootstrap.js';
import { MAIN, freePort, startGatewayProcess } from '../helpers/processes.js';
import { send, signV1, toQuery, v1Params, type RawResponse } from '../helpers/raw-client.js';
import { SOFTHSM_MODULE, startTestGateway, type TestGateway } from '../helpers/test-gateway.js';

// HSM faults on a real SoftHSMv2 token: every request gets exactly one clean answer, and the gateway recovers alone.
const cleanup: Array<() => Promise<void> | void> = [];
afterAll(async () => {
  for (const c of cleanup.reverse()) await c();
});

function signRequest(gw: TestGateway, alias: string, i: number): string {
  const key = gw.demo.keys.find((k) => k.alias === alias)!;
  const algorithm = alias.includes('rsa') ? 'RSA_PKCS1_SHA_256' : 'ECDSA_SHA_256';
  const digest = createHash('sha256').update(String(i)).digest('base64');
  return `${gw.url}/?${toQuery(signV1(v1Params(gw.demo.accessKeyId, { KeyId: key.keyId, KeyVersionId: key.keyVersionId, Algorithm: algorithm, Digest: digest }), gw.secret))}`;
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 20_000): Promise<number> {
  const started = Date.now();
  while (!(await check())) {
    if (Date.now() - started > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return Date.now() - started;
}

describe('the token vanishes under load and comes back', () => {
  it('when the token store disappears, then requests get 503 and /readyz says so; when it returns, signing resumes without a restart', async () => {
    // One gateway per test, closed before the next starts: PKCS#11 state is per process.
    const gw = await startTestGateway({ editConfig: (c) => ((c.hsm.healthIntervalMs = 200), (c.throttle.defaultLimit = 1_000_000)) });
    try {
    const tokens = join(gw.home, 'softhsm', 'tokens');
    const answers: RawResponse[] = [];
    let sent = 0;
    let running = true;
    const workers = Array.from({ length: 4 }, async () => {
      while (running) {
        sent++;
        answers.push(await send(signRequest(gw, 'alias/demo-ec-p256', sent)));
      }
    });

    await new Promise((r) => setTimeout(r, 500));
    renameSync(tokens, `${tokens}.gone`);
    const noticedMs = await until('readyz to fail', async () => (await send(`${gw.url}/readyz`)).status === 503);
    await new Promise((r) => setTimeout(r, 1000));
    renameSync(`${tokens}.gone`, tokens);
    const recoveredMs = await until('readyz to pass again', async () => (await send(`${gw.url}/readyz`)).status === 200);
    await new Promise((r) => setTimeout(r, 500));
    running = false;
    await Promise.all(workers);

    const byStatus = new Map<number, number>();
    for (const a of answers) byStatus.set(a.status, (byStatus.get(a.status) ?? 0) + 1);
    console.info(`token vanished: noticed in ${noticedMs} ms, recovered ${recoveredMs} ms after its return; answers by status: ${JSON.stringify([...byStatus])}`);
    // Exactly one answer per request, each either a signature or a clean 503; never a 500, never a leak.
    expect(answers.length).toBe(sent);
    for (const a of answers.filter((x) => x.status !== 200 && x.status !== 503)) console.info('unexpected answer', a.status, a.text);
    expect([...byStatus.keys()].every((s) => s === 200 || s === 503)).toBe(true);
    expect(byStatus.get(503) ?? 0).toBeGreaterThan(0);
    for (const a of answers.filter((x) => x.status === 503)) {
      expect(a.json).toMatchObject({ Code: 'ServiceUnavailableTemporary' });
      expect(a.text).not.toMatch(/CKR_|pkcs11|\n\s+at\s/i);
    }
    // After recovery the same key signs again.
    expect((await send(signRequest(gw, 'alias/demo-ec-p256', 1e6))).status).toBe(200);
    } finally {
      await gw.close();
    }
  });
});

describe('session pool pressure', () => {
  it('when far more requests arrive than sessions and queue, then the excess gets 503 at once and every request is answered', async () => {
    const gw = await startTestGateway({ editConfig: (c) => ((c.hsm.sessions = 1), (c.hsm.maxWaiting = 2)) });
    let answers: RawResponse[];
    try {
      answers = await Promise.all(Array.from({ length: 40 }, (_, i) => send(signRequest(gw, 'alias/demo-rsa-3072', i))));
    } finally {
      await gw.close();
    }
    const statuses = answers.map((a) => a.status);
    expect(statuses.every((s) => s === 200 || s === 503)).toBe(true);
    expect(statuses.filter((s) => s === 200).length).toBeGreaterThanOrEqual(3);
    expect(statuses.filter((s) => s === 503).length).toBeGreaterThan(0);
  });
});

describe('a wrong PIN at start', () => {
  it('when the configured PIN is wrong, then the gateway refuses to start, says why, and never prints the PIN', async () => {
    const home = mkdtempSync(join(tmpdir(), 'hsm-gateway-pin-'));
    cleanup.push(() => rmSync(home, { recursive: true, force: true }));
    const demo = bootstrapDemo({ home, modulePath: SOFTHSM_MODULE, host: '127.0.0.1', port: 0 });
    const config = parse(readFileSync(demo.configFile, 'utf8'));
    const wrongPin = join(home, 'secrets', 'wrong-pin');
    writeFileSync(wrongPin, 'WrongPin-4711', { mode: 0o600 });
    config.hsm.pin = { file: wrongPin };
    const configFile = join(home, 'wrong-pin.yaml');
    writeFileSync(configFile, stringify(config));
    const port = await freePort();
    await expect(startGatewayProcess({ HSM_GATEWAY_CONFIG: configFile, HSM_GATEWAY_PORT: String(port) })).rejects.toThrow(/exited early[\s\S]*CKR_PIN_INCORRECT/);
    await expect(startGatewayProcess({ HSM_GATEWAY_CONFIG: configFile, HSM_GATEWAY_PORT: String(port) })).rejects.not.toThrow(/WrongPin-4711/);
    expect(existsSync(configFile)).toBe(true);
    // EX_CONFIG, so that a supervisor does not restart into another wrong login (systemd: RestartPreventExitStatus=78).
    const env = { ...process.env, HSM_GATEWAY_CONFIG: configFile, HSM_GATEWAY_PORT: String(port) };
    expect(spawnSync(process.execPath, [MAIN], { env, timeout: 30_000 }).status).toBe(78);
    writeFileSync(configFile, stringify({ ...config, unexpected: true }));
    expect(spawnSync(process.execPath, [MAIN], { env, timeout: 30_000 }).status).toBe(78);
  });
});

import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { opensslVerifyDigest } from '../helpers/openssl.js';
import { kmsClient } from '../helpers/sdk.js';

// The gateway as `npm start` runs it (node dist/main.js, built by the set-up script), on a fresh data dir.
const MAIN = resolve(import.meta.dirname, '../../dist/main.js');

async function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => ok(port));
    });
  });
}

interface Running {
  child: ChildProcess;
  stdout: () => string;
  exited: Promise<number | null>;
}

async function startMain(home: string, port: number): Promise<Running> {
  const child = spawn(process.execPath, [MAIN], {
    env: { ...process.env, HSM_GATEWAY_HOME: home, HSM_GATEWAY_PORT: String(port), HSM_GATEWAY_CONFIG: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((ok) => child.once('exit', (code) => ok(code)));
  const deadline = Date.now() + 60_000;
  while (!out.includes('"message":"listening"')) {
    if (child.exitCode !== null) throw new Error(`gateway exited early:\n${out}`);
    if (Date.now() > deadline) throw new Error(`gateway did not start:\n${out}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { child, stdout: () => out, exited };
}

let home: string;
let port: number;

beforeAll(async () => {
  home = mkdtempSync(join(tmpdir(), 'hsm-gateway-lifecycle-'));
  port = await freePort();
});
afterAll(() => {
  rmSync(home, { recursive: true, force: true });
});

describe('npm start: first start, restart, SIGTERM', () => {
  let firstAccessKeyId = '';

  it('when the gateway starts on an empty data dir, then it creates the demo, prints it once, and signs', async () => {
    const run = await startMain(home, port);
    try {
      const demo = JSON.parse(readFileSync(join(home, 'demo.json'), 'utf8'));
      firstAccessKeyId = demo.accessKeyId;
      expect(demo.endpoint).toBe(`http://127.0.0.1:${port}`);
      expect(demo.accessKeyId).toMatch(/^LTAI[A-Za-z0-9]{20}$/);
      expect(demo.keys.map((k: { keySpec: string }) => k.keySpec).sort()).toEqual(['EC_P256', 'EC_P256K', 'RSA_2048', 'RSA_3072']);
      for (const k of demo.keys) {
        expect(k.keyId).toMatch(/^[0-9a-f-]{36}$/);
        expect(k.keyVersionId).toMatch(/^[0-9a-f-]{36}$/);
        expect(k.alias).toMatch(/^alias\/demo-/);
        expect(k.publicKeyPem).toContain('-----BEGIN PUBLIC KEY-----');
      }
      const secret = readFileSync(demo.accessKeySecretFile, 'utf8').trim();
      expect(statSync(demo.accessKeySecretFile).mode & 0o777).toBe(0o600);
      expect(statSync(join(home, 'secrets', 'user-pin')).mode & 0o777).toBe(0o600);
      expect(run.stdout()).toContain(demo.accessKeyId);
      expect(run.stdout()).toContain(secret);
      // The PIN is never printed, not even on the first start.
      expect(run.stdout()).not.toContain(readFileSync(join(home, 'secrets', 'user-pin'), 'utf8').trim());

      const key = demo.keys.find((k: { keySpec: string }) => k.keySpec === 'RSA_2048');
      const digest = createHash('sha256').update('first start').digest();
      const r = await kmsClient({ endpoint: `127.0.0.1:${port}`, accessKeyId: demo.accessKeyId, accessKeySecret: secret }).asymmetricSign({
        keyId: key.alias,
        keyVersionId: key.keyVersionId,
        algorithm: 'RSA_PSS_SHA_256',
        digest: digest.toString('base64'),
      });
      expect(opensslVerifyDigest({ publicKeyPem: key.publicKeyPem, digest, signature: Buffer.from(r.value, 'base64'), pss: true })).toContain(
        'Signature Verified Successfully',
      );
    } finally {
      run.child.kill('SIGTERM');
      expect(await run.exited).toBe(0);
    }
  });

  it('when it starts again, then it reuses the token, keys and credentials and prints no secret', async () => {
    const before = readFileSync(join(home, 'demo.json'), 'utf8');
    const run = await startMain(home, port);
    try {
      expect(readFileSync(join(home, 'demo.json'), 'utf8')).toBe(before);
      expect(JSON.parse(before).accessKeyId).toBe(firstAccessKeyId);
      expect(run.stdout()).not.toContain('created on first start');
      const demo = JSON.parse(before);
      expect(run.stdout()).not.toContain(readFileSync(demo.accessKeySecretFile, 'utf8').trim());
    } finally {
      run.child.kill('SIGTERM');
      await run.exited;
    }
  });

  it('when SIGTERM arrives during signing, then in-flight requests finish and the process exits 0', async () => {
    const run = await startMain(home, port);
    const demo = JSON.parse(readFileSync(join(home, 'demo.json'), 'utf8'));
    const secret = readFileSync(demo.accessKeySecretFile, 'utf8').trim();
    const key = demo.keys.find((k: { keySpec: string }) => k.keySpec === 'RSA_3072');
    const client = kmsClient({ endpoint: `127.0.0.1:${port}`, accessKeyId: demo.accessKeyId, accessKeySecret: secret });
    const inFlight = Array.from({ length: 16 }, (_, i) =>
      client.asymmetricSign({
        keyId: key.keyId,
        keyVersionId: key.keyVersionId,
        algorithm: 'RSA_PKCS1_SHA_256',
        digest: createHash('sha256').update(String(i)).digest('base64'),
      }),
    );
    // Let the requests reach the gateway, then ask it to stop while they are being signed.
    await new Promise((r) => setTimeout(r, 30));
    run.child.kill('SIGTERM');
    const results = await Promise.allSettled(inFlight);
    expect(await run.exited).toBe(0);
    const served = results.filter((r) => r.status === 'fulfilled');
    // Requests accepted before the signal are answered; none is cut off with a broken connection mid-sign.
    for (const r of results) {
      if (r.status === 'rejected') expect(String((r.reason as Error).message)).toMatch(/ECONNREFUSED|ECONNRESET|socket hang up/);
    }
    expect(served.length).toBeGreaterThan(0);
    expect(run.stdout()).toContain('"message":"stopped"');
  });
});

import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { opensslVerifyDigest } from '../helpers/openssl.js';
import { freePort, startGatewayProcess } from '../helpers/processes.js';
import { kmsClient } from '../helpers/sdk.js';

// The gateway as `npm start` runs it (bin/hsm-gateway.cjs over dist/, built by the set-up script), on a fresh data dir.
const startMain = (home: string, port: number) => startGatewayProcess({ HSM_GATEWAY_HOME: home, HSM_GATEWAY_PORT: String(port) });

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
      expect(demo.keys.map((k: { keySpec: string }) => k.keySpec).sort()).toEqual(['EC_P256', 'EC_P256K', 'EC_SM2', 'RSA_2048', 'RSA_3072']);
      for (const k of demo.keys) {
        expect(k.keyId).toMatch(/^[0-9a-f-]{36}$/);
        expect(k.keyVersionId).toMatch(/^[0-9a-f-]{36}$/);
        expect(k.alias).toMatch(/^alias\/demo-/);
        expect(k.publicKeyPem).toContain('-----BEGIN PUBLIC KEY-----');
      }
      const secret = readFileSync(demo.accessKeySecretFile, 'utf8').trim();
      expect(statSync(demo.accessKeySecretFile).mode & 0o777).toBe(0o600);
      expect(statSync(join(home, 'secrets', 'user-pin')).mode & 0o777).toBe(0o600);
      expect(run.output()).toContain(demo.accessKeyId);
      // The entry point sized the libuv pool before it started (token calls run there).
      expect(run.output()).toContain('"uvThreadpoolSize":16');
      expect(run.output()).toContain(secret);
      // The PIN is never printed, not even on the first start.
      expect(run.output()).not.toContain(readFileSync(join(home, 'secrets', 'user-pin'), 'utf8').trim());

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
      expect(await run.stop()).toBe(0);
    }
  });

  it('when it starts again, then it reuses the token, keys and credentials and prints no secret', async () => {
    const before = readFileSync(join(home, 'demo.json'), 'utf8');
    const run = await startMain(home, port);
    try {
      expect(readFileSync(join(home, 'demo.json'), 'utf8')).toBe(before);
      expect(JSON.parse(before).accessKeyId).toBe(firstAccessKeyId);
      expect(run.output()).not.toContain('created on first start');
      const demo = JSON.parse(before);
      expect(run.output()).not.toContain(readFileSync(demo.accessKeySecretFile, 'utf8').trim());
    } finally {
      run.child.kill('SIGTERM');
      await run.exited;
    }
  });

  it('when gateway.yaml gains an access key and SIGHUP arrives, then the running gateway accepts it without a restart', async () => {
    const run = await startMain(home, port);
    const configFile = join(home, 'gateway.yaml');
    const original = readFileSync(configFile, 'utf8');
    try {
      const demo = JSON.parse(readFileSync(join(home, 'demo.json'), 'utf8'));
      const key = demo.keys.find((k: { keySpec: string }) => k.keySpec === 'EC_P256');
      const secretFile = join(home, 'secrets', 'hup.secret');
      writeFileSync(secretFile, 'hup-secret-0123456789', { mode: 0o600 });
      const config = parse(original);
      config.auth.accessKeys.push({ accessKeyId: 'LTAIhupHupHupHupHupHupHup', secret: { file: secretFile }, account: 'default' });
      writeFileSync(configFile, stringify(config));
      run.child.kill('SIGHUP');
      const client = kmsClient({ endpoint: `127.0.0.1:${port}`, accessKeyId: 'LTAIhupHupHupHupHupHupHup', accessKeySecret: 'hup-secret-0123456789' });
      const attempt = () =>
        client.asymmetricSign({ keyId: key.keyId, keyVersionId: key.keyVersionId, algorithm: 'ECDSA_SHA_256', digest: createHash('sha256').update('hup').digest('base64') });
      const deadline = Date.now() + 10_000;
      let signed = false;
      while (!signed && Date.now() < deadline) {
        signed = await attempt().then(() => true, () => false);
        if (!signed) await new Promise((r) => setTimeout(r, 50));
      }
      if (!signed) console.log(run.output().slice(-3000));
      expect(signed).toBe(true);
      expect(run.output()).toContain('reloaded access keys and key registry');
    } finally {
      writeFileSync(configFile, original);
      await run.stop();
    }
  });

  it('when SIGTERM arrives during signing, then every request the gateway took in is answered with its signature and the process exits 0', async () => {
    const run = await startMain(home, port);
    const demo = JSON.parse(readFileSync(join(home, 'demo.json'), 'utf8'));
    const secret = readFileSync(demo.accessKeySecretFile, 'utf8').trim();
    const key = demo.keys.find((k: { keySpec: string }) => k.keySpec === 'RSA_3072');
    const client = kmsClient({ endpoint: `127.0.0.1:${port}`, accessKeyId: demo.accessKeyId, accessKeySecret: secret });
    const inFlight = Array.from({ length: 40 }, (_, i) =>
      client.asymmetricSign({
        keyId: key.keyId,
        keyVersionId: key.keyVersionId,
        algorithm: 'RSA_PKCS1_SHA_256',
        digest: createHash('sha256').update(String(i)).digest('base64'),
      }),
    );
    // Ask it to stop while requests are arriving and being signed.
    await new Promise((r) => setTimeout(r, 50));
    run.child.kill('SIGTERM');
    const results = await Promise.allSettled(inFlight);
    expect(await run.exited).toBe(0);
    // The listener closes at once: a connection the gateway had not taken in yet is refused or reset, without an
    // answer (a load balancer retries it elsewhere). Nothing else may fail.
    const failures = results.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason));
    for (const failure of failures) expect(failure).toMatch(/ECONNRESET|ECONNREFUSED|socket hang up|other side closed/);
    // Every request it took in was answered, with its signature: one log line per request, each 200, as many as
    // the client received (an answer lost on the way would show as a line without its answer).
    const lines = run.output().split('\n').filter((l) => l.includes('"message":"request"'));
    const answered = results.filter((r) => r.status === 'fulfilled').length;
    expect(answered).toBeGreaterThan(0);
    expect(lines).toHaveLength(answered);
    for (const line of lines) expect(line).toContain('"status":200');
    expect(run.output()).toContain('"message":"stopped"');
  });
});

import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DemoInfo } from '../../src/demo/bootstrap.js';
import { freePort, startGatewayProcess, type Running } from '../helpers/processes.js';

// The examples a new user runs first, run the way the README tells them to (`node examples/<name>.mjs` in the
// checkout, with the gateway of `npm start` running; HSM_GATEWAY_HOME, which every example honours, points both at a
// fresh data directory instead of .data/). Each must exit 0 and print one verified line per signature.
const ROOT = resolve(import.meta.dirname, '../..');
const run = promisify(execFile);

/** `node examples/….mjs` as the README shows it, in the order it shows them. */
const readmeCommands = [...readFileSync(join(ROOT, 'README.md'), 'utf8').matchAll(/\bnode (examples\/[\w.-]+\.mjs)\b/g)].map((m) => m[1]!);
const exampleFiles = readdirSync(join(ROOT, 'examples')).filter((f) => f.endsWith('.mjs'));

/** The AsymmetricSign algorithms each key spec takes (README's table), and openssl's verdict on a good signature. */
const ALGORITHMS: Record<string, string[]> = {
  RSA_2048: ['RSA_PKCS1_SHA_256', 'RSA_PSS_SHA_256'],
  RSA_3072: ['RSA_PKCS1_SHA_256', 'RSA_PSS_SHA_256'],
  EC_P256: ['ECDSA_SHA_256'],
  EC_P256K: ['ECDSA_SHA_256'],
  EC_SM2: ['SM2DSA'],
};
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');

let home: string;
let gateway: Running;
let demo: DemoInfo;

beforeAll(async () => {
  home = mkdtempSync(join(tmpdir(), 'hsm-gateway-examples-'));
  const port = await freePort();
  gateway = await startGatewayProcess({ HSM_GATEWAY_HOME: home, HSM_GATEWAY_PORT: String(port) });
  demo = JSON.parse(readFileSync(join(home, 'demo.json'), 'utf8')) as DemoInfo;
});
afterAll(async () => {
  await gateway?.stop();
  rmSync(home, { recursive: true, force: true });
});

/** Runs an example as a user would; resolves with its exit code and output (a failing example does not throw). */
async function runExample(path: string): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [path], { cwd: ROOT, env: { ...process.env, HSM_GATEWAY_HOME: home }, timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? String(err) };
  }
}

/** The lines each example must print, from the demo it runs against. */
const expectedLines: Record<string, () => RegExp[]> = {
  'examples/asymmetric-sign.mjs': () =>
    demo.keys.flatMap((key) =>
      ALGORITHMS[key.keySpec]!.map(
        (algorithm) =>
          new RegExp(
            `^${escape(key.alias)} +${algorithm} +KeyId ${key.keyId}  openssl: ${algorithm === 'SM2DSA' ? 'Signature Verified Successfully' : 'Verified OK'}$`,
          ),
      ),
    ),
  'examples/cas-sign.mjs': () => {
    const cert = demo.certificates.find((c) => c.keySpec === 'RSA_2048')!;
    return [new RegExp(`^CAS Sign SHA256withRSA/P7 with certificate ${cert.casIdentifier}: \\d+ Base64 chars; openssl: CMS Verification successful$`)];
  },
};

describe('the README examples', () => {
  it('when the README shows how to run the examples, then it names every file in examples/, and this test knows each', () => {
    expect([...new Set(readmeCommands)].sort()).toEqual(exampleFiles.map((f) => `examples/${f}`).sort());
    expect(Object.keys(expectedLines).sort()).toEqual(exampleFiles.map((f) => `examples/${f}`).sort());
  });

  it('when the demo is made, then it has one key of every spec the sign example covers', () => {
    expect(demo.keys.map((k) => k.keySpec).sort()).toEqual(Object.keys(ALGORITHMS).sort());
  });

  for (const path of [...new Set(readmeCommands)]) {
    it(`when a user runs node ${path} against the demo gateway, then it exits 0 and prints a verified line per signature`, async () => {
      const r = await runExample(path);
      expect(r, `${path} failed:\n${r.stdout}\n${r.stderr}`).toMatchObject({ code: 0 });
      const lines = r.stdout.trim().split('\n');
      const expected = expectedLines[path]!();
      expect(lines).toHaveLength(expected.length);
      expected.forEach((re, i) => expect(lines[i]).toMatch(re));
    });
  }
});

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { bootstrapDemo } from '../../src/demo/bootstrap.js';
import type { Token } from '../../src/hsm/token.js';
import { LifecycleError } from '../../src/keys/errors.js';
import { RegistrySource } from '../../src/keys/registry-source.js';
import { openToken } from '../../src/open-tokens.js';
import { SOFTHSM_MODULE } from '../helpers/test-gateway.js';

// RegistrySource on a real SoftHSMv2 token: a change is checked as a whole before anything is written.
const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined };
let home: string;
let token: Token;
let source: RegistrySource;

beforeAll(async () => {
  home = mkdtempSync(join(tmpdir(), 'hsm-gateway-source-'));
  const demo = bootstrapDemo({ home, modulePath: SOFTHSM_MODULE, host: '127.0.0.1', port: 0 });
  token = openToken('default', loadConfig(demo.configFile, {}).hsm, quiet, { sessions: 1, healthIntervalMs: 0 });
  source = new RegistrySource({ token, log: quiet });
  await source.load();
});
afterAll(async () => {
  await token?.close();
  rmSync(home, { recursive: true, force: true });
});

describe('RegistrySource.change', () => {
  it('when a change would give two certificates one CAS identifier, then it is refused and nothing reaches the token', async () => {
    const [first, second] = source.current().registry.certificates();
    const before = source.current().generation;
    const error = await source
      .change((_snapshot, writer) => {
        writer.putCertificate({ ...second!, description: 'written first, must not stay' });
        writer.putCertificate({ ...first!, casIdentifier: second!.casIdentifier });
      })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LifecycleError);
    expect((error as Error).message).toMatch(/names two certificates/);
    await source.refresh();
    expect(source.current().generation).toBe(before);
    expect(source.current().registry.certificate(second!.certificateId)?.description).not.toBe('written first, must not stay');
  });

  it('when a change is valid, then every write of it lands and the generation moves', async () => {
    const [key] = source.current().registry.all();
    const before = source.current().generation;
    await source.change((_snapshot, writer) => writer.putKey({ ...key!, description: 'changed' }));
    expect(source.current().generation).not.toBe(before);
    const reread = new RegistrySource({ token, log: quiet });
    expect((await reread.load()).registry.find(key!.keyId)?.description).toBe('changed');
  });
});

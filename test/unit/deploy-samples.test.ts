import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { KeyRegistry, RegistryFileSchema } from '../../src/keys/registry.js';

const root = resolve(import.meta.dirname, '../..');

describe('the samples shipped in deploy/', () => {
  it('when the SoftHSMv2 sample config is loaded, then it validates and references its secrets', () => {
    const config = loadConfig(resolve(root, 'deploy/config/softhsmv2.example.yaml'), {});
    expect(config.hsm.pin).toEqual({ env: 'HSM_GATEWAY_PIN' });
    expect(config.auth.accessKeys[0]!.secret).toHaveProperty('file');
  });

  it('when the sample registry is parsed, then it is a valid registry', () => {
    const file = RegistryFileSchema.parse(JSON.parse(readFileSync(resolve(root, 'deploy/config/registry.example.json'), 'utf8')));
    expect(new KeyRegistry(file).find('alias/payments-signing', 'default')?.keySpec).toBe('RSA_2048');
  });
});

describe('the README', () => {
  it('when the configuration example in the README is loaded, then it validates (the README tells the truth)', async () => {
    const { mkdtempSync, writeFileSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const readme = readFileSync(resolve(root, 'README.md'), 'utf8');
    const section = readme.slice(readme.indexOf('## Configuration'));
    const yaml = /```yaml\n([\s\S]*?)```/.exec(section)![1]!;
    const file = resolve(mkdtempSync(resolve(tmpdir(), 'hsm-gateway-readme-')), 'gateway.yaml');
    writeFileSync(file, yaml);
    const config = loadConfig(file, {});
    expect(config.tokens.sm2?.profile.sm2?.signMechanism).toBe(0x80001002);
    expect(config.server.tls?.requireClientCertificate).toBe(true);
    expect(config.throttle.defaultLimit).toBe(1000);
  });
});

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
    expect(new KeyRegistry(file).find('alias/payments-signing')?.keySpec).toBe('RSA_2048');
  });
});

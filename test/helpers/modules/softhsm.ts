import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { digits, findCommand, findFile, missing, ModuleUnavailableError, pkcs11ToolKeyPair, run, type ModuleInstance } from './common.js';

/** Where Debian's softhsm2 package puts the module. */
export const SOFTHSM_MODULE = '/usr/lib/softhsm/libsofthsm2.so';

/** softhsm/softhsm2.conf.template: the configuration the demo bootstrap writes (src/demo/bootstrap.ts). */
const TEMPLATE = resolve(import.meta.dirname, '../../../softhsm/softhsm2.conf.template');

export function softhsmMissing(): string | undefined {
  return missing([
    [SOFTHSM_MODULE, findFile(SOFTHSM_MODULE), 'softhsm2'],
    ['softhsm2-util', findCommand('softhsm2-util'), 'softhsm2'],
  ]);
}

/**
 * A SoftHSMv2 token in its own directory, found through SOFTHSM2_CONF (as the demo bootstrap and the test gateway
 * make theirs), initialized by softhsm2-util. Also the store behind p11-kit's server (p11kit.ts).
 */
export function makeSoftHsmToken(dir: string, label: string): { conf: string; pin: string; soPin: string } {
  const tokenDir = join(dir, 'tokens');
  mkdirSync(tokenDir, { recursive: true, mode: 0o700 });
  const conf = join(dir, 'softhsm2.conf');
  writeFileSync(conf, readFileSync(TEMPLATE, 'utf8').replaceAll('{{TOKEN_DIR}}', tokenDir));
  const pin = digits(8);
  const soPin = digits(8);
  run('softhsm2-util', ['--init-token', '--free', '--label', label, '--so-pin', soPin, '--pin', pin], { env: { SOFTHSM2_CONF: conf } });
  return { conf, pin, soPin };
}

export async function startSoftHsm(): Promise<ModuleInstance> {
  const reason = softhsmMissing();
  if (reason) throw new ModuleUnavailableError('softhsm', reason);
  const dir = mkdtempSync(join(tmpdir(), 'hsm-gateway-matrix-softhsm-'));
  const tokenLabel = 'matrix-softhsm';
  const { conf, pin, soPin } = makeSoftHsmToken(dir, tokenLabel);
  const env = { SOFTHSM2_CONF: conf };
  return {
    name: 'softhsm',
    title: 'SoftHSMv2',
    modulePath: SOFTHSM_MODULE,
    tokenLabel,
    pin,
    soPin,
    env,
    dir,
    async toolKeyPair(spec, label, idHex) {
      return pkcs11ToolKeyPair(SOFTHSM_MODULE, ['--token-label', tokenLabel], pin, spec, label, idHex, env);
    },
    async close() {
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

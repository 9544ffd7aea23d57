import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { digits, findCommand, findLibrary, missing, ModuleUnavailableError, run, type ModuleInstance } from './common.js';

export function nssMissing(): string | undefined {
  return missing([
    ['libsoftokn3.so', findLibrary('libsoftokn3.so'), 'libnss3'],
    ['certutil', findCommand('certutil'), 'libnss3-tools'],
  ]);
}

/** The token of an NSS database: slot 2 of softokn ("NSS User Private Key and Certificate Services"). */
const NSS_TOKEN_LABEL = 'NSS Certificate DB';

/**
 * C_Initialize's pReserved for softokn: the database directory. This is the string NSS itself builds for its own
 * database (certPrefix/keyPrefix/secmod as NSS_Initialize passes them); `configdir='sql:<dir>'` alone works too.
 */
const nssInitArgs = (dir: string): string => `configdir='sql:${dir}' certPrefix='' keyPrefix='' secmod='secmod.db' flags=`;

/**
 * NSS softokn on a fresh database (cert9.db + key4.db) made by certutil in the instance's directory. softokn has no
 * configuration file and reads no environment: without `configdir=…` in pReserved, C_Initialize answers
 * CKR_ARGUMENTS_BAD. The database password is the token's user PIN; there is no security officer (soPin is empty:
 * softokn takes an SO login with an empty PIN only while no password is set).
 */
export async function startNss(): Promise<ModuleInstance> {
  const reason = nssMissing();
  if (reason) throw new ModuleUnavailableError('nss', reason);
  const modulePath = findLibrary('libsoftokn3.so')!;
  const dir = mkdtempSync(join(tmpdir(), 'hsm-gateway-matrix-nss-'));
  const pin = digits(8);
  const passwordFile = join(dir, '.password');
  writeFileSync(passwordFile, `${pin}\n`, { mode: 0o600 });
  run('certutil', ['-N', '-d', `sql:${dir}`, '-f', passwordFile]);
  return {
    name: 'nss',
    title: 'NSS softokn',
    modulePath,
    tokenLabel: NSS_TOKEN_LABEL,
    pin,
    soPin: '',
    env: {},
    initArgs: nssInitArgs(dir),
    dir,
    async toolKeyPair(spec, label) {
      // certutil makes a key pair with a self-signed certificate; the key's CKA_LABEL is the nickname, its CKA_ID
      // the SHA-1 of the public key (not chosen). softokn keeps no public key object beside the private key.
      const noise = join(dir, '.noise');
      writeFileSync(noise, randomBytes(64));
      const keyArgs = spec === 'RSA_2048' ? ['-k', 'rsa', '-g', '2048'] : ['-k', 'ec', '-q', 'nistp256'];
      run('certutil', ['-S', '-d', `sql:${dir}`, '-f', passwordFile, '-z', noise, '-n', label, '-s', `CN=${label}`, '-x', '-t', 'u,u,u', '-Z', 'SHA256', ...keyArgs]);
      return { tool: `certutil -S -x ${keyArgs.join(' ')} (self-signed certificate + key)`, label };
    },
    async close() {
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

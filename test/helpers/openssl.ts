import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Runs openssl with the given files written to a temp dir; `args` receives their paths. Returns what it
 * printed (stdout, then stderr); throws with that output when openssl fails.
 */
export function openssl(files: Record<string, string | Buffer>, args: (path: (name: string) => string) => string[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'hsm-gateway-openssl-'));
  try {
    for (const [name, content] of Object.entries(files)) writeFileSync(join(dir, name), content);
    const run = spawnSync('openssl', args((name) => join(dir, name)), { stdio: ['ignore', 'pipe', 'pipe'] });
    const printed = `${run.stdout.toString()}${run.stderr.toString()}`.trim();
    if (run.status !== 0) throw new Error(`openssl ${args(() => '…').join(' ')} failed:\n${printed}`);
    return printed;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const PSS = (flag: string): string[] => [flag, 'rsa_padding_mode:pss', flag, 'rsa_pss_saltlen:32'];

/**
 * Verifies a signature over a SHA-256 digest with `openssl pkeyutl -verify`, the way a relying party would.
 * Returns openssl's verdict line; throws (with openssl's output) when verification fails.
 */
export function opensslVerifyDigest(opts: { publicKeyPem: string; digest: Buffer; signature: Buffer; pss?: boolean }): string {
  return openssl({ 'pub.pem': opts.publicKeyPem, 'digest.bin': opts.digest, 'sig.bin': opts.signature }, (p) => [
    'pkeyutl', '-verify', '-pubin', '-inkey', p('pub.pem'), '-in', p('digest.bin'), '-sigfile', p('sig.bin'),
    '-pkeyopt', 'digest:sha256', ...(opts.pss ? [...PSS('-pkeyopt'), '-pkeyopt', 'rsa_mgf1_md:sha256'] : []),
  ]);
}

/** Verifies a signature over the message itself with `openssl dgst -sha256 -verify`. */
export function opensslVerifyMessage(opts: { publicKeyPem: string; message: Buffer; signature: Buffer; pss?: boolean }): string {
  return openssl({ 'pub.pem': opts.publicKeyPem, 'msg.bin': opts.message, 'sig.bin': opts.signature }, (p) => [
    'dgst', '-sha256', '-verify', p('pub.pem'), '-signature', p('sig.bin'), ...(opts.pss ? PSS('-sigopt') : []), p('msg.bin'),
  ]);
}

/** The public key (PEM) of a certificate, as `openssl x509 -pubkey` prints it. */
export function certificatePublicKey(certificatePem: string): string {
  return openssl({ 'cert.pem': certificatePem }, (p) => ['x509', '-in', p('cert.pem'), '-pubkey', '-noout']) + '\n';
}

/** Verifies a detached CMS SignedData over `content` against a trust anchor, as `openssl cms -verify` does. */
export function opensslCmsVerify(opts: { cms: Buffer; content: Buffer; rootPem: string }): string {
  return openssl({ 'p7.der': opts.cms, 'data.bin': opts.content, 'root.pem': opts.rootPem }, (p) => [
    'cms', '-verify', '-binary', '-inform', 'DER', '-in', p('p7.der'), '-content', p('data.bin'), '-CAfile', p('root.pem'), '-out', '/dev/null',
  ]);
}

/** Verifies an SM2 signature (DER) over the message itself, with the default user id, as GB/T 32918.2 does. */
export function opensslVerifySm2(opts: { publicKeyPem: string; message: Buffer; signature: Buffer }): string {
  return openssl({ 'pub.pem': opts.publicKeyPem, 'msg.bin': opts.message, 'sig.der': opts.signature }, (p) => [
    'pkeyutl', '-verify', '-pubin', '-inkey', p('pub.pem'), '-rawin', '-in', p('msg.bin'), '-sigfile', p('sig.der'),
    '-digest', 'sm3', '-pkeyopt', 'distid:1234567812345678',
  ]);
}

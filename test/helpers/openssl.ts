import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Verifies a signature over a SHA-256 digest with the openssl CLI (`pkeyutl -verify`), the way a relying
 * party would. Returns openssl's verdict line, or throws with its output when verification fails.
 */
export function opensslVerifyDigest(opts: { publicKeyPem: string; digest: Buffer; signature: Buffer; pss?: boolean }): string {
  const dir = mkdtempSync(join(tmpdir(), 'hsm-gateway-openssl-'));
  try {
    writeFileSync(join(dir, 'pub.pem'), opts.publicKeyPem);
    writeFileSync(join(dir, 'digest.bin'), opts.digest);
    writeFileSync(join(dir, 'sig.bin'), opts.signature);
    const args = ['pkeyutl', '-verify', '-pubin', '-inkey', join(dir, 'pub.pem'), '-in', join(dir, 'digest.bin'), '-sigfile', join(dir, 'sig.bin'), '-pkeyopt', 'digest:sha256'];
    if (opts.pss) args.push('-pkeyopt', 'rsa_padding_mode:pss', '-pkeyopt', 'rsa_pss_saltlen:32', '-pkeyopt', 'rsa_mgf1_md:sha256');
    return execFileSync('openssl', args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString().trim();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Verifies a signature over the message itself with `openssl dgst -sha256 -verify`. */
export function opensslVerifyMessage(opts: { publicKeyPem: string; message: Buffer; signature: Buffer; pss?: boolean }): string {
  const dir = mkdtempSync(join(tmpdir(), 'hsm-gateway-openssl-'));
  try {
    writeFileSync(join(dir, 'pub.pem'), opts.publicKeyPem);
    writeFileSync(join(dir, 'msg.bin'), opts.message);
    writeFileSync(join(dir, 'sig.bin'), opts.signature);
    const args = ['dgst', '-sha256', '-verify', join(dir, 'pub.pem'), '-signature', join(dir, 'sig.bin')];
    if (opts.pss) args.push('-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:32');
    args.push(join(dir, 'msg.bin'));
    return execFileSync('openssl', args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString().trim();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runAuditVerify } from '../../src/cli/audit-verify.js';
import { casClient, kmsClient } from '../helpers/sdk.js';
import { startTestGateway, type TestGateway } from '../helpers/test-gateway.js';

// The audit line of each request: what happened, to which key, by whom — never the data, signature or secrets.
let gw: TestGateway;
let auditFile: string;
const digest = createHash('sha256').update('audited message').digest('base64');
let signature = '';

beforeAll(async () => {
  gw = await startTestGateway();
  auditFile = join(gw.home, 'audit', 'audit.log');
  const key = gw.demo.keys.find((k) => k.keySpec === 'RSA_2048')!;
  const creds = { endpoint: gw.endpoint, accessKeyId: gw.demo.accessKeyId, accessKeySecret: gw.secret };
  const r = await kmsClient(creds).asymmetricSign({ keyId: key.alias, keyVersionId: key.keyVersionId, algorithm: 'RSA_PSS_SHA_256', digest });
  signature = r.value;
  await casClient(creds).sign({ certIdentifier: gw.demo.certificates[0]!.casIdentifier, message: 'a secret message', messageType: 'RAW', signingAlgorithm: 'SHA256withRSA' });
  await kmsClient(creds).asymmetricSign({ keyId: 'alias/nope', keyVersionId: key.keyVersionId, algorithm: 'RSA_PSS_SHA_256', digest }).catch(() => {});
});
afterAll(async () => {
  await gw?.close();
});

const lines = () => readFileSync(auditFile, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);

describe('the audit trail of the demo config', () => {
  it('when a key signs, then its audit line names time, request, account, action, key, version, algorithm, message type, outcome and latency', () => {
    const key = gw.demo.keys.find((k) => k.keySpec === 'RSA_2048')!;
    const line = lines().find((l) => l.action === 'AsymmetricSign' && l.status === 200)!;
    expect(line).toMatchObject({
      account: 'default',
      accessKeyId: gw.demo.accessKeyId,
      action: 'AsymmetricSign',
      keyId: key.keyId,
      keyVersionId: key.keyVersionId,
      algorithm: 'RSA_PSS_SHA_256',
      messageType: 'DIGEST',
      outcome: 'success',
      code: 'OK',
    });
    expect(line.requestId).toMatch(/^[0-9a-f-]{36}$/);
    expect(typeof line.time).toBe('string');
    expect(typeof line.latencyMs).toBe('number');
  });

  it('when requests are audited, then no line holds a digest, message, signature, secret or PIN', () => {
    const text = readFileSync(auditFile, 'utf8');
    for (const forbidden of [digest, signature, 'a secret message', gw.secret, gw.pin]) expect(text).not.toContain(forbidden);
  });

  it('when a request is refused, then its line carries the Alibaba code', () => {
    expect(lines().find((l) => l.code === 'Forbidden.AliasNotFound')).toMatchObject({ outcome: 'client_error', status: 404 });
  });

  it('when the file is untouched, then the verifier accepts it; when a line is edited, it names that line', () => {
    const out: string[] = [];
    expect(runAuditVerify([auditFile], (s) => out.push(s))).toBe(0);
    expect(out.join('\n')).toContain('OK');
    const original = readFileSync(auditFile, 'utf8').split('\n');
    original[1] = original[1]!.replace('"status":200', '"status":201');
    writeFileSync(auditFile, original.join('\n'));
    const after: string[] = [];
    expect(runAuditVerify([auditFile], (s) => after.push(s))).toBe(1);
    expect(after.join('\n')).toMatch(/ALTERED .* line 2/);
  });
});

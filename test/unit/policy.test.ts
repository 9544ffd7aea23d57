import { describe, expect, it } from 'vitest';
import { Policy, PolicyDocumentSchema, type PolicyDocument } from '../../src/keys/policy.js';

const policy = (...docs: PolicyDocument[]) => new Policy(docs.map((d) => PolicyDocumentSchema.parse(d)));
const KEY_A = 'acs:kms:cn-hangzhou:default:key/aaaa';
const KEY_B = 'acs:kms:cn-hangzhou:default:key/bbbb';

describe('RAM-style policies', () => {
  it('when nothing matches, then it is denied (an Allow is needed)', () => {
    expect(policy({ Statement: [{ Effect: 'Allow', Action: 'kms:DescribeKey', Resource: '*' }] }).allows('kms:AsymmetricSign', KEY_A)).toBe(false);
  });

  it('when an Allow matches action and resource, then it is allowed; actions ignore case, wildcards work', () => {
    const p = policy({ Statement: [{ Effect: 'Allow', Action: ['KMS:Asymmetric*'], Resource: ['acs:kms:*:*:key/aaa?'] }] });
    expect(p.allows('kms:AsymmetricSign', KEY_A)).toBe(true);
    expect(p.allows('kms:AsymmetricVerify', KEY_A)).toBe(true);
    expect(p.allows('kms:AsymmetricSign', KEY_B)).toBe(false);
  });

  it('when a Deny matches, then it wins over any Allow, in any document', () => {
    const p = policy(
      { Statement: [{ Effect: 'Allow', Action: 'kms:*', Resource: '*' }] },
      { Statement: [{ Effect: 'Deny', Action: 'kms:AsymmetricSign', Resource: KEY_B }] },
    );
    expect(p.allows('kms:AsymmetricSign', KEY_A)).toBe(true);
    expect(p.allows('kms:AsymmetricSign', KEY_B)).toBe(false);
    expect(p.allows('kms:GetPublicKey', KEY_B)).toBe(true);
  });

  it('when a resource pattern holds regex characters, then they are literal', () => {
    const p = policy({ Statement: [{ Effect: 'Allow', Action: 'kms:*', Resource: 'acs:kms:cn-hangzhou:default:key/a.b' }] });
    expect(p.allows('kms:DescribeKey', 'acs:kms:cn-hangzhou:default:key/a.b')).toBe(true);
    expect(p.allows('kms:DescribeKey', 'acs:kms:cn-hangzhou:default:key/axb')).toBe(false);
  });

  it('when a document is malformed, then the schema refuses it', () => {
    expect(PolicyDocumentSchema.safeParse({ Statement: [{ Effect: 'Maybe', Action: 'kms:*', Resource: '*' }] }).success).toBe(false);
    expect(PolicyDocumentSchema.safeParse({ Statement: [] }).success).toBe(false);
  });
});

import { timingSafeEqual } from 'node:crypto';
import type { Policy } from '../../keys/policy.js';
import { ApiError } from '../error-catalog.js';
import type { RpcRequest } from '../rpc-request.js';
import type { AccessKey, CredentialStore } from './credentials.js';
import { MAX_NONCE_LENGTH } from './replay-guard.js';
import { v1Parts, v1Signature } from './signature-v1.js';
import { parseV3Authorization, sha256Hex, v3Signature } from './signature-v3.js';

export interface Caller {
  accessKeyId: string;
  account: string;
  scheme: 'V1' | 'V3';
  /** The request's nonce, for the replay check (ReplayCheck) that follows authentication. */
  nonce: string;
  /** How long from now the request's timestamp stays in the window: its nonce need not be remembered longer. */
  nonceKeepMs: number;
  policy?: Policy;
}

export interface AuthOptions {
  credentials: CredentialStore;
  /** Largest accepted distance between the request's timestamp and the gateway's clock. */
  timestampWindowMs: number;
  now?: () => number;
}

/** Headers a V3 request must sign: without them a signed request could be re-pointed or replayed. */
const V3_REQUIRED_SIGNED = ['host', 'x-acs-action', 'x-acs-version', 'x-acs-date', 'x-acs-signature-nonce'];
const TIMESTAMP = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z$/;

const incomplete = (what: string): ApiError =>
  new ApiError('IncompleteSignature', `The request signature does not conform to Alibaba Cloud standards: ${what}`);

function sameText(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** What a request claims before anything is checked: who signed it, when, with which nonce, and how to check it. */
interface Claim {
  scheme: Caller['scheme'];
  accessKeyId: string;
  nonce: string;
  timestamp: string;
  /** True when the request is signed with this secret. */
  verify: (secret: string) => boolean;
}

/** ACS3-HMAC-SHA256: the Authorization header, the signed x-acs- headers and the body's hash. */
function v3Claim(req: RpcRequest, authorization: string): Claim {
  const auth = parseV3Authorization(authorization);
  if (!auth) throw incomplete('the Authorization header is malformed.');
  const notSigned = V3_REQUIRED_SIGNED.filter((h) => !auth.signedHeaders.includes(h));
  if (notSigned.length > 0) throw incomplete(`the headers ${notSigned.join(', ')} must be signed.`);
  const date = req.headers['x-acs-date'];
  const nonce = req.headers['x-acs-signature-nonce'];
  if (!date) throw incomplete('the x-acs-date header is missing.');
  if (!nonce) throw incomplete('the x-acs-signature-nonce header is missing.');
  const contentHash = req.headers['x-acs-content-sha256'];
  if (contentHash !== undefined && !sameText(contentHash.toLowerCase(), sha256Hex(req.rawBody))) {
    throw new ApiError('SignatureDoesNotMatch', 'The x-acs-content-sha256 header does not match the request body.');
  }
  return { scheme: 'V3', accessKeyId: auth.accessKeyId, nonce, timestamp: date, verify: (secret) => sameText(v3Signature(req, auth.signedHeaders, secret), auth.signature) };
}

/** HMAC-SHA1 (SignatureVersion 1.0): the signature and its parameters among the request's. */
function v1Claim(req: RpcRequest): Claim {
  const p = v1Parts(req);
  if (p.accessKeyId === undefined && p.signature === undefined) {
    throw incomplete('the request carries no signature (neither an Authorization header nor a Signature parameter).');
  }
  if (!p.accessKeyId) throw incomplete('the AccessKeyId parameter is missing.');
  if (!p.signature) throw incomplete('the Signature parameter is missing.');
  if (p.method !== 'HMAC-SHA1') throw incomplete('SignatureMethod must be HMAC-SHA1.');
  if (p.version !== '1.0') throw incomplete('SignatureVersion must be 1.0.');
  if (!p.nonce) throw incomplete('the SignatureNonce parameter is missing.');
  if (!p.timestamp) throw incomplete('the Timestamp parameter is missing.');
  const signature = p.signature;
  return { scheme: 'V1', accessKeyId: p.accessKeyId, nonce: p.nonce, timestamp: p.timestamp, verify: (secret) => sameText(v1Signature(req, secret), signature) };
}

/** The access key that signed the claim, if it exists, signed it and is enabled. */
function signingKey(claim: Claim, credentials: CredentialStore): AccessKey {
  const key = credentials.find(claim.accessKeyId);
  if (!key) throw new ApiError('InvalidAccessKeyId.NotFound');
  // Every live secret is tried (constant-time each), so which one matched is not observable.
  const matches = key.secrets.map((secret) => claim.verify(secret));
  if (!matches.includes(true)) throw new ApiError('SignatureDoesNotMatch');
  if (!key.enabled) throw new ApiError('Forbidden.AccessKey');
  return key;
}

/** Checks the timestamp window; returns how long the request's nonce must be remembered. */
function nonceKeepMsOf(timestamp: string, opts: AuthOptions): number {
  const now = (opts.now ?? Date.now)();
  const at = TIMESTAMP.test(timestamp) ? Date.parse(timestamp) : NaN;
  if (Number.isNaN(at)) {
    throw new ApiError('IllegalTimestamp', 'The timestamp must be UTC in the form YYYY-MM-DDThh:mm:ssZ.');
  }
  if (Math.abs(now - at) > opts.timestampWindowMs) {
    throw new ApiError('IllegalTimestamp', `The request timestamp is more than ${opts.timestampWindowMs / 60000} minutes away from the server time.`);
  }
  // Past at + window the timestamp check refuses the request anyway (+1: the window's edge is still inside it).
  return at + opts.timestampWindowMs + 1 - now;
}

/**
 * Verifies the request signature exactly as the official SDKs produce it (V1 HMAC-SHA1 or V3 ACS3-HMAC-SHA256), then
 * the timestamp window. The nonce is checked next, by ReplayCheck: only for a request that passed both, so nobody can
 * burn another caller's nonces.
 */
export function authenticate(req: RpcRequest, opts: AuthOptions): Caller {
  const authorization = req.headers.authorization;
  const claim = authorization !== undefined ? v3Claim(req, authorization) : v1Claim(req);
  if (claim.nonce.length > MAX_NONCE_LENGTH) {
    throw new ApiError('InvalidParameter', `The SignatureNonce must be at most ${MAX_NONCE_LENGTH} characters (the SDKs send 32 hex digits or a UUID).`);
  }
  const key = signingKey(claim, opts.credentials);
  const nonceKeepMs = nonceKeepMsOf(claim.timestamp, opts);
  return { accessKeyId: claim.accessKeyId, account: key.account, scheme: claim.scheme, nonce: claim.nonce, nonceKeepMs, ...(key.policy ? { policy: key.policy } : {}) };
}

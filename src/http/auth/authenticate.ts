import { timingSafeEqual } from 'node:crypto';
import type { Policy } from '../../keys/policy.js';
import { ApiError, signatureDoesNotMatch } from '../error-catalog.js';
import type { RpcRequest } from '../rpc-request.js';
import type { AccessKey, CredentialStore } from './credentials.js';
import { MAX_NONCE_LENGTH } from './replay-guard.js';
import { v1Parts, v1Sign, v1StringToSign } from './signature-v1.js';
import { parseV3Authorization, sha256Hex, v3Sign, v3StringToSign } from './signature-v3.js';

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
  /** The request time (ms since the epoch), well formed; the window is checked after the signature. */
  at: number;
  /** What the gateway signs for this request: only what the client sent (SignatureDoesNotMatch shows it). */
  stringToSign: string;
  /** True when the request is signed with this secret. */
  verify: (secret: string) => boolean;
}

/** The request time, or IllegalTimestamp (the cloud's words) when it is missing or not UTC `YYYY-MM-DDThh:mm:ssZ`. */
function timeOf(timestamp: string | undefined): number {
  const at = timestamp !== undefined && TIMESTAMP.test(timestamp) ? Date.parse(timestamp) : NaN;
  if (Number.isNaN(at)) throw new ApiError('IllegalTimestamp');
  return at;
}

/** ACS3-HMAC-SHA256: the Authorization header, the signed x-acs- headers and the body's hash. */
function v3Claim(req: RpcRequest, authorization: string): Claim {
  const auth = parseV3Authorization(authorization);
  if (!auth) throw incomplete('the Authorization header is malformed.');
  const at = timeOf(req.headers['x-acs-date']);
  const notSigned = V3_REQUIRED_SIGNED.filter((h) => !auth.signedHeaders.includes(h));
  if (notSigned.length > 0) throw incomplete(`the headers ${notSigned.join(', ')} must be signed.`);
  const nonce = req.headers['x-acs-signature-nonce'];
  if (!nonce) throw incomplete('the x-acs-signature-nonce header is missing.');
  const stringToSign = v3StringToSign(req, auth.signedHeaders);
  const contentHash = req.headers['x-acs-content-sha256'];
  // A body changed after signing: the string the gateway signs has the real body's hash, not the one the client signed.
  if (contentHash !== undefined && !sameText(contentHash.toLowerCase(), sha256Hex(req.rawBody))) throw signatureDoesNotMatch(stringToSign);
  return { scheme: 'V3', accessKeyId: auth.accessKeyId, nonce, at, stringToSign, verify: (secret) => sameText(v3Sign(stringToSign, secret), auth.signature) };
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
  const at = timeOf(p.timestamp);
  const signature = p.signature;
  const stringToSign = v1StringToSign(req);
  return { scheme: 'V1', accessKeyId: p.accessKeyId, nonce: p.nonce, at, stringToSign, verify: (secret) => sameText(v1Sign(stringToSign, secret), signature) };
}

/** The access key that signed the claim, if it exists, signed it and is enabled. */
function signingKey(claim: Claim, credentials: CredentialStore): AccessKey {
  const key = credentials.find(claim.accessKeyId);
  if (!key) throw new ApiError('InvalidAccessKeyId.NotFound');
  // Every live secret is tried (constant-time each), so which one matched is not observable.
  const matches = key.secrets.map((secret) => claim.verify(secret));
  if (!matches.includes(true)) throw signatureDoesNotMatch(claim.stringToSign);
  if (!key.enabled) throw new ApiError('Forbidden.AccessKey');
  return key;
}

/** Checks the timestamp window (past or future); returns how long the request's nonce must be remembered. */
function nonceKeepMsOf(at: number, opts: AuthOptions): number {
  const now = (opts.now ?? Date.now)();
  if (Math.abs(now - at) > opts.timestampWindowMs) throw new ApiError('InvalidTimeStamp.Expired');
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
  const nonceKeepMs = nonceKeepMsOf(claim.at, opts);
  return { accessKeyId: claim.accessKeyId, account: key.account, scheme: claim.scheme, nonce: claim.nonce, nonceKeepMs, ...(key.policy ? { policy: key.policy } : {}) };
}

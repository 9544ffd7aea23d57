import { timingSafeEqual } from 'node:crypto';
import type { Policy } from '../../keys/policy.js';
import { ApiError } from '../error-catalog.js';
import type { RpcRequest } from '../rpc-request.js';
import type { CredentialStore } from './credentials.js';
import type { ReplayGuard } from './replay-guard.js';
import { v1Parts, v1Signature } from './signature-v1.js';
import { parseV3Authorization, sha256Hex, v3Signature } from './signature-v3.js';

export interface Caller {
  accessKeyId: string;
  account: string;
  scheme: 'V1' | 'V3';
  /** The request's nonce (already checked by this replica's guard; a shared guard may check it again). */
  nonce: string;
  /** How long from now the request's timestamp stays in the window: its nonce need not be remembered longer. */
  nonceKeepMs: number;
  policy?: Policy;
}

export interface AuthOptions {
  credentials: CredentialStore;
  replayGuard: ReplayGuard;
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

/**
 * Verifies the request signature exactly as the official SDKs produce it (V1 HMAC-SHA1 or V3
 * ACS3-HMAC-SHA256), then the timestamp window, then the nonce. Order matters: a nonce is only
 * remembered for a request whose signature is valid, so nobody can burn another caller's nonces.
 */
export function authenticate(req: RpcRequest, opts: AuthOptions): Caller {
  const authorization = req.headers.authorization;
  let accessKeyId: string;
  let nonce: string;
  let timestamp: string;
  let verify: (secret: string) => boolean;
  let scheme: Caller['scheme'];

  if (authorization !== undefined) {
    scheme = 'V3';
    const auth = parseV3Authorization(authorization);
    if (!auth) throw incomplete('the Authorization header is malformed.');
    const notSigned = V3_REQUIRED_SIGNED.filter((h) => !auth.signedHeaders.includes(h));
    if (notSigned.length > 0) throw incomplete(`the headers ${notSigned.join(', ')} must be signed.`);
    const date = req.headers['x-acs-date'];
    const n = req.headers['x-acs-signature-nonce'];
    if (!date) throw incomplete('the x-acs-date header is missing.');
    if (!n) throw incomplete('the x-acs-signature-nonce header is missing.');
    const contentHash = req.headers['x-acs-content-sha256'];
    if (contentHash !== undefined && !sameText(contentHash.toLowerCase(), sha256Hex(req.rawBody))) {
      throw new ApiError('SignatureDoesNotMatch', 'The x-acs-content-sha256 header does not match the request body.');
    }
    accessKeyId = auth.accessKeyId;
    nonce = n;
    timestamp = date;
    verify = (secret) => sameText(v3Signature(req, auth.signedHeaders, secret), auth.signature);
  } else {
    scheme = 'V1';
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
    accessKeyId = p.accessKeyId;
    nonce = p.nonce;
    timestamp = p.timestamp;
    const signature = p.signature;
    verify = (secret) => sameText(v1Signature(req, secret), signature);
  }

  const key = opts.credentials.find(accessKeyId);
  if (!key) throw new ApiError('InvalidAccessKeyId.NotFound');
  // Every live secret is tried (constant-time each), so which one matched is not observable.
  const matches = key.secrets.map((secret) => verify(secret));
  if (!matches.includes(true)) throw new ApiError('SignatureDoesNotMatch');
  if (!key.enabled) throw new ApiError('Forbidden.AccessKey');

  const now = (opts.now ?? Date.now)();
  const at = TIMESTAMP.test(timestamp) ? Date.parse(timestamp) : NaN;
  if (Number.isNaN(at)) {
    throw new ApiError('IllegalTimestamp', 'The timestamp must be UTC in the form YYYY-MM-DDThh:mm:ssZ.');
  }
  if (Math.abs(now - at) > opts.timestampWindowMs) {
    throw new ApiError('IllegalTimestamp', `The request timestamp is more than ${opts.timestampWindowMs / 60000} minutes away from the server time.`);
  }
  // Past at + window the timestamp check refuses the request anyway (+1: the window's edge is still inside it).
  const nonceKeepMs = at + opts.timestampWindowMs + 1 - now;
  if (!opts.replayGuard.checkAndRemember(accessKeyId, nonce, nonceKeepMs)) throw new ApiError('SignatureNonceUsed');

  return { accessKeyId, account: key.account, scheme, nonce, nonceKeepMs, ...(key.policy ? { policy: key.policy } : {}) };
}

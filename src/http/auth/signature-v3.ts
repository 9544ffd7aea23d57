import { createHash, createHmac } from 'node:crypto';
import type { RpcRequest } from '../rpc-request.js';
import { canonicalQuery } from './canonical.js';

const V3_ALGORITHM = 'ACS3-HMAC-SHA256';

interface V3Authorization {
  accessKeyId: string;
  signedHeaders: string[];
  signature: string;
}

const AUTHORIZATION = /^ACS3-HMAC-SHA256\s+Credential=([^,\s]+),\s*SignedHeaders=([^,\s]+),\s*Signature=([0-9a-fA-F]+)$/;

/** Parses `ACS3-HMAC-SHA256 Credential=AK,SignedHeaders=a;b,Signature=hex`; undefined when malformed. */
export function parseV3Authorization(header: string): V3Authorization | undefined {
  const m = AUTHORIZATION.exec(header.trim());
  if (!m) return undefined;
  return { accessKeyId: m[1]!, signedHeaders: m[2]!.toLowerCase().split(';'), signature: m[3]!.toLowerCase() };
}

export const sha256Hex = (data: Buffer | string): string => createHash('sha256').update(data).digest('hex');

function v3CanonicalRequest(req: RpcRequest, signedHeaders: readonly string[]): string {
  const headerBlock = signedHeaders.map((n) => `${n}:${(req.headers[n] ?? '').trim()}\n`).join('');
  return [
    req.method,
    req.path || '/',
    canonicalQuery(req.queryPairs),
    headerBlock,
    signedHeaders.join(';'),
    sha256Hex(req.rawBody),
  ].join('\n');
}

/** StringToSign = ACS3-HMAC-SHA256 \n hex(SHA-256(canonical request)): only what the client sent, hashed. */
export function v3StringToSign(req: RpcRequest, signedHeaders: readonly string[]): string {
  return `${V3_ALGORITHM}\n${sha256Hex(v3CanonicalRequest(req, signedHeaders))}`;
}

export function v3Sign(stringToSign: string, secret: string): string {
  return createHmac('sha256', secret).update(stringToSign).digest('hex');
}

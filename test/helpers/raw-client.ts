import { createHmac, randomBytes } from 'node:crypto';
import { percentEncode } from '../../src/http/auth/canonical.js';

/** Alibaba timestamp format: YYYY-MM-DDThh:mm:ssZ. */
export const aliTimestamp = (d = new Date()): string => d.toISOString().replace(/\.\d{3}Z$/, 'Z');

/**
 * A deliberately hand-made V1 client for the negative tests: it can sign with a wrong secret, reuse a nonce,
 * send a stale timestamp or leave parts out, none of which an official SDK will do.
 */
export function signV1(params: Record<string, string>, secret: string, method = 'GET'): Record<string, string> {
  const canonical = Object.keys(params)
    .sort()
    .map((k) => `${percentEncode(k)}=${percentEncode(params[k]!)}`)
    .join('&');
  const stringToSign = `${method}&${percentEncode('/')}&${percentEncode(canonical)}`;
  return { ...params, Signature: createHmac('sha1', `${secret}&`).update(stringToSign).digest('base64') };
}

export function v1Params(accessKeyId: string, business: Record<string, string>, overrides: Record<string, string> = {}): Record<string, string> {
  return {
    Action: 'AsymmetricSign',
    Version: '2016-01-20',
    Format: 'JSON',
    AccessKeyId: accessKeyId,
    SignatureMethod: 'HMAC-SHA1',
    SignatureVersion: '1.0',
    SignatureNonce: randomBytes(16).toString('hex'),
    Timestamp: aliTimestamp(),
    ...business,
    ...overrides,
  };
}

export const toQuery = (params: Record<string, string>): string =>
  Object.entries(params)
    .map(([k, v]) => `${percentEncode(k)}=${percentEncode(v)}`)
    .join('&');

export interface RawResponse {
  status: number;
  headers: Headers;
  text: string;
  json: Record<string, unknown> | undefined;
}

export async function send(url: string, init?: RequestInit): Promise<RawResponse> {
  const res = await fetch(url, init);
  const text = await res.text();
  let json: Record<string, unknown> | undefined;
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}

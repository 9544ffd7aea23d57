import { createHash, createHmac, randomBytes } from 'node:crypto';
import { percentEncode } from '../../src/http/auth/canonical.js';

/** Alibaba timestamp format: YYYY-MM-DDThh:mm:ssZ. */
export const aliTimestamp = (d = new Date()): string => d.toISOString().replace(/\.\d{3}Z$/, 'Z');

/**
 * A deliberately hand-made V1 client for the negative tests: it can sign with a wrong secret, reuse a nonce,
 * send a stale timestamp or leave parts out, none of which an official SDK will do.
 */
export function signV1(params: Record<string, string>, secret: string, method = 'GET'): Record<string, string> {
  return { ...params, Signature: createHmac('sha1', `${secret}&`).update(v1StringToSign(params, method)).digest('base64') };
}

/** The V1 string to sign as a client computes it (the Python core SDK keeps it as `request.string_to_sign`). */
export function v1StringToSign(params: Record<string, string>, method = 'GET'): string {
  const canonical = Object.keys(params)
    .sort()
    .map((k) => `${percentEncode(k)}=${percentEncode(params[k]!)}`)
    .join('&');
  return `${method}&${percentEncode('/')}&${percentEncode(canonical)}`;
}

/** A hand-made V3 (ACS3-HMAC-SHA256) POST to `/`: parameters in the query, an empty body. */
interface V3Request {
  url: string;
  headers: Record<string, string>;
  /** What the client signed: ACS3-HMAC-SHA256 \n hex(SHA-256(canonical request)). */
  stringToSign: string;
}

export function signV3(
  base: { url: string; host: string },
  accessKeyId: string,
  secret: string,
  action: string,
  version: string,
  query: Record<string, string>,
  headerOverrides: Record<string, string | undefined> = {},
): V3Request {
  const sha256 = (s: string): string => createHash('sha256').update(s).digest('hex');
  const all: Record<string, string | undefined> = {
    host: base.host,
    'x-acs-action': action,
    'x-acs-version': version,
    'x-acs-date': aliTimestamp(),
    'x-acs-signature-nonce': randomBytes(16).toString('hex'),
    'x-acs-content-sha256': sha256(''),
    ...headerOverrides,
  };
  const headers = Object.fromEntries(Object.entries(all).filter((e): e is [string, string] => e[1] !== undefined));
  const names = Object.keys(headers).sort();
  const canonicalQuery = Object.keys(query)
    .sort()
    .map((k) => `${percentEncode(k)}=${percentEncode(query[k]!)}`)
    .join('&');
  const canonicalRequest = ['POST', '/', canonicalQuery, names.map((n) => `${n}:${headers[n]}\n`).join(''), names.join(';'), sha256('')].join('\n');
  const stringToSign = `ACS3-HMAC-SHA256\n${sha256(canonicalRequest)}`;
  const signature = createHmac('sha256', secret).update(stringToSign).digest('hex');
  const authorization = `ACS3-HMAC-SHA256 Credential=${accessKeyId},SignedHeaders=${names.join(';')},Signature=${signature}`;
  const { host: _host, ...sent } = headers;
  return { url: `${base.url}/?${toQuery(query)}`, headers: { ...sent, authorization }, stringToSign };
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

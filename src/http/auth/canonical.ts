import type { Pair } from '../rpc-request.js';

const UNRESERVED = /^[A-Za-z0-9\-_.~]*$/;
const SUB_DELIMS = /[!'()*]/;
const SUB_DELIMS_ALL = /[!'()*]/g;

/**
 * RFC 3986 percent-encoding as the Alibaba Cloud SDKs sign it: encodeURIComponent, plus ! ' ( ) * escaped.
 * Space is %20 and ~ stays. Values are decoded from the wire first, then re-encoded with this.
 */
export function percentEncode(s: string): string {
  // Most names and values (Action, ids, hex nonces) need no encoding: one scan instead of an encode and a replace.
  if (UNRESERVED.test(s)) return s;
  const encoded = encodeURIComponent(s);
  return SUB_DELIMS.test(encoded) ? encoded.replace(SUB_DELIMS_ALL, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase()) : encoded;
}

/** Code-unit order, the same as Array.prototype.sort's default and the SDKs' own sort. */
export const byCodeUnit = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/** `k=v&k=v` sorted by encoded key, both sides percent-encoded. */
export function canonicalQuery(pairs: readonly Pair[]): string {
  return pairs
    .map(([k, v]) => [percentEncode(k), percentEncode(v)] as const)
    .sort((a, b) => byCodeUnit(a[0], b[0]))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');
}

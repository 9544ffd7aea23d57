import { invalid } from './error-catalog.js';

export type Pair = readonly [key: string, value: string];

/**
 * An RPC request as the signature schemes see it: the raw pieces, never re-serialized.
 * `queryPairs` and `bodyPairs` keep the wire order; `params` is their union by name.
 */
export interface RpcRequest {
  method: string;
  path: string;
  queryPairs: Pair[];
  bodyPairs: Pair[];
  params: Record<string, string>;
  headers: Record<string, string | undefined>;
  rawBody: Buffer;
}

/** `+` is a space, then percent-decoding; most names and values have neither (one scan, no copies). */
const decode = (s: string): string => (NOTHING_TO_DECODE.test(s) ? s : decodeURIComponent(s.replace(/\+/g, ' ')));
const NOTHING_TO_DECODE = /^[^%+]*$/;

/** Parses `a=1&b=2` the way urlencoded forms and query strings are written (`+` is a space). */
export function parsePairs(text: string): Pair[] {
  const pairs: Pair[] = [];
  for (const part of text.split('&')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const rawKey = eq < 0 ? part : part.slice(0, eq);
    const rawValue = eq < 0 ? '' : part.slice(eq + 1);
    try {
      pairs.push([decode(rawKey), decode(rawValue)]);
    } catch {
      throw invalid('query', 'malformed percent-encoding.');
    }
  }
  return pairs;
}

/** More parameters than any action takes (with the common ones) is not a real client. */
const MAX_PARAMETERS = 64;

/** Union of query and body parameters; a name given twice is refused (parameter pollution). */
export function mergeParams(...lists: Pair[][]): Record<string, string> {
  const params: Record<string, string> = Object.create(null);
  const count = lists.reduce((n, list) => n + list.length, 0);
  if (count > MAX_PARAMETERS) throw invalid('parameters', `at most ${MAX_PARAMETERS} parameters are accepted (got ${count}).`);
  for (const list of lists) {
    for (const [k, v] of list) {
      if (k in params) throw invalid(k, 'the parameter is given more than once.');
      params[k] = v;
    }
  }
  return params;
}

const FORM = 'application/x-www-form-urlencoded';

export function isFormBody(contentType: string | undefined): boolean {
  return (contentType ?? '').toLowerCase().startsWith(FORM);
}

export function buildRpcRequest(input: {
  method: string;
  url: string;
  headers: Record<string, string | string[] | undefined>;
  rawBody: Buffer;
}): RpcRequest {
  const qi = input.url.indexOf('?');
  const path = qi < 0 ? input.url : input.url.slice(0, qi);
  const queryPairs = parsePairs(qi < 0 ? '' : input.url.slice(qi + 1));
  const headers: Record<string, string | undefined> = {};
  for (const [name, value] of Object.entries(input.headers)) {
    headers[name.toLowerCase()] = Array.isArray(value) ? value.join(',') : value;
  }
  const bodyPairs = input.rawBody.length > 0 && isFormBody(headers['content-type']) ? parsePairs(input.rawBody.toString('utf8')) : [];
  return {
    method: input.method.toUpperCase(),
    path,
    queryPairs,
    bodyPairs,
    params: mergeParams(queryPairs, bodyPairs),
    headers,
    rawBody: input.rawBody,
  };
}

import { invalid, missing } from '../http/error-catalog.js';

export function required(params: Record<string, string>, name: string): string {
  const v = params[name];
  if (v === undefined || v === '') throw missing(name);
  return v;
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Strict Base64 (standard alphabet, padded): Buffer.from would silently skip bad characters. */
export function base64Param(params: Record<string, string>, name: string): Buffer {
  const v = required(params, name);
  if (!BASE64.test(v)) throw invalid(name, 'the value is not valid Base64.');
  return Buffer.from(v, 'base64');
}

export function oneOf<T extends string>(params: Record<string, string>, name: string, allowed: readonly T[], fallback?: T): T {
  const v = params[name];
  if (v === undefined || v === '') {
    if (fallback !== undefined) return fallback;
    throw missing(name);
  }
  if (!(allowed as readonly string[]).includes(v)) throw invalid(name, `valid values are ${allowed.join(', ')}.`);
  return v as T;
}

export function booleanParam(params: Record<string, string>, name: string): boolean {
  const v = params[name];
  if (v === undefined || v === '' || v.toLowerCase() === 'false') return false;
  if (v.toLowerCase() === 'true') return true;
  throw invalid(name, 'valid values are true and false.');
}

export function optionalParam(params: Record<string, string>, name: string): string | undefined {
  const v = params[name];
  return v === undefined || v === '' ? undefined : v;
}

export function optionalInteger(params: Record<string, string>, name: string): number | undefined {
  const v = optionalParam(params, name);
  if (v === undefined) return undefined;
  if (!/^\d{1,15}$/.test(v)) throw invalid(name, 'the value must be a non-negative integer.');
  return Number(v);
}

/** Largest RAW message the sign operations take (decoded bytes), as the seeds say: 4 KB. */
const MAX_RAW_MESSAGE_BYTES = 4096;

/** Checks the size of the data to sign: a RAW message at most 4 KB, a digest exactly the plan's length. */
export function checkMessageSize(name: string, data: Buffer, kind: 'RAW' | 'DIGEST', digestBytes: number): void {
  if (kind === 'RAW' && data.length > MAX_RAW_MESSAGE_BYTES) {
    throw invalid(name, `a RAW message is at most ${MAX_RAW_MESSAGE_BYTES} bytes (got ${data.length}); sign its digest with MessageType DIGEST.`);
  }
  if (kind === 'DIGEST' && data.length !== digestBytes) {
    throw invalid(name, `a digest for this algorithm is ${digestBytes} bytes (got ${data.length}).`);
  }
}

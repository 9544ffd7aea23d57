import { STATUS_CODES } from 'node:http';
import type { Response } from 'express';
import { XMLBuilder } from 'fast-xml-parser';
import { errorAnchor, type ApiError } from './error-catalog.js';

export type Format = 'JSON' | 'XML';

/** `Format=XML` (any case) asks for XML; everything else, absent included, is JSON. */
export function formatOf(params: Record<string, string>): Format {
  return params.Format?.toUpperCase() === 'XML' ? 'XML' : 'JSON';
}

const xml = new XMLBuilder({ format: false, suppressEmptyNode: false });

/**
 * What XML 1.0 cannot carry at all, not even as a character reference: C0 controls but tab, LF and CR, lone
 * surrogates, U+FFFE and U+FFFF. Bodies echo client text (an unknown alias, a key description), and one such
 * character makes the whole document unreadable to a conforming parser (Python's expat refuses it).
 */
const NOT_XML = /[^\t\n\r\x20-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]/gu;

/** Each character XML cannot carry, written out as `\uXXXX` text: the reader still sees which one was sent. */
function xmlText(value: unknown): unknown {
  if (typeof value === 'string') return value.replace(NOT_XML, (c) => `\\u${c.charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')}`);
  if (Array.isArray(value)) return value.map(xmlText);
  if (value !== null && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, xmlText(v)]));
  return value;
}

function send(res: Response, status: number, format: Format, root: string, body: Record<string, unknown>): void {
  res.status(status);
  if (format === 'XML') {
    res.type('text/xml;charset=utf-8').send(`<?xml version="1.0" encoding="UTF-8"?>${xml.build({ [root]: xmlText(body) })}`);
  } else {
    res.type('application/json;charset=utf-8').send(JSON.stringify(body));
  }
}

export function sendResult(res: Response, format: Format, xmlRoot: string, body: Record<string, unknown>): void {
  send(res, 200, format, xmlRoot, body);
}

/** Where an error's explanation is: the code's entry in docs/errors.md under the configured base. */
const recommendOf = (recommendBaseUrl: string, err: ApiError): string => `${recommendBaseUrl}#${errorAnchor(err.code)}`;

/**
 * The Alibaba error body, in the cloud's field order: RequestId, HostId, Code, Message, Recommend (a link to what the
 * code means and what to do); XML errors have an `Error` root.
 */
/**
 * The error body for a request Node's HTTP parser refused before the app saw it (no Express response exists): a
 * complete HTTP/1.1 answer to write on the socket, JSON (the format parameter was never read), then the connection
 * is closed.
 */
export function rawErrorResponse(err: ApiError, ids: { requestId: string; hostId: string; recommendBaseUrl: string }): string {
  const body = JSON.stringify({ RequestId: ids.requestId, HostId: ids.hostId, Code: err.code, Message: err.message, Recommend: recommendOf(ids.recommendBaseUrl, err) });
  return (
    `HTTP/1.1 ${err.status} ${STATUS_CODES[err.status] ?? 'Error'}\r\nContent-Type: application/json;charset=utf-8\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\nx-acs-request-id: ${ids.requestId}\r\nConnection: close\r\n\r\n${body}`
  );
}

export function sendError(res: Response, format: Format, err: ApiError, ids: { requestId: string; hostId: string; recommendBaseUrl: string }): void {
  for (const [name, value] of Object.entries(err.headers)) res.setHeader(name, value);
  send(res, err.status, format, 'Error', { RequestId: ids.requestId, HostId: ids.hostId, Code: err.code, Message: err.message, Recommend: recommendOf(ids.recommendBaseUrl, err) });
}

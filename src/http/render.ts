import type { Response } from 'express';
import { XMLBuilder } from 'fast-xml-parser';
import type { ApiError } from './error-catalog.js';

export type Format = 'JSON' | 'XML';

/** `Format=XML` (any case) asks for XML; everything else, absent included, is JSON. */
export function formatOf(params: Record<string, string>): Format {
  return params.Format?.toUpperCase() === 'XML' ? 'XML' : 'JSON';
}

const xml = new XMLBuilder({ format: false, suppressEmptyNode: false });

function send(res: Response, status: number, format: Format, root: string, body: Record<string, unknown>): void {
  res.status(status);
  if (format === 'XML') {
    res.type('text/xml;charset=utf-8').send(`<?xml version="1.0" encoding="UTF-8"?>${xml.build({ [root]: body })}`);
  } else {
    res.type('application/json;charset=utf-8').send(JSON.stringify(body));
  }
}

export function sendResult(res: Response, format: Format, xmlRoot: string, body: Record<string, unknown>): void {
  send(res, 200, format, xmlRoot, body);
}

/** The Alibaba error body: RequestId, HostId, Code, Message; XML errors have an `Error` root. */
export function sendError(res: Response, format: Format, err: ApiError, requestId: string, hostId: string): void {
  for (const [name, value] of Object.entries(err.headers)) res.setHeader(name, value);
  send(res, err.status, format, 'Error', { RequestId: requestId, HostId: hostId, Code: err.code, Message: err.message });
}

import { IncomingMessage, ServerResponse } from 'node:http';
import express from 'express';
import { describe, expect, it } from 'vitest';
import { openListener } from '../../src/http/listener.js';

// Express 5 gives every request and response its app's prototypes (Object.setPrototypeOf); the API listener constructs
// them with those prototypes instead, so that no object changes its prototype after it was made (at 1,000 req/s the
// change made every scavenge promote ≈ 0.9 MB: bench/README.md, "Memory").

const timeouts = { headersMs: 5000, requestMs: 5000, keepAliveMs: 5000 };

async function prototypesSeen(withPrototypes: boolean): Promise<{ request: boolean; response: boolean; body: unknown; stream: boolean }> {
  const app = express();
  app.get('/', (req, res) => {
    res.json({ path: req.path, accepts: req.get('accept') ?? null });
  });
  const listener = await openListener(app, { host: '127.0.0.1', port: 0, timeouts, ...(withPrototypes ? { prototypes: { request: app.request, response: app.response } } : {}) });
  let seen = { request: false, response: false, stream: false };
  // Before Express's own handler: what the server constructed.
  listener.server.prependListener('request', (req, res) => {
    seen = { request: Object.getPrototypeOf(req) === app.request, response: Object.getPrototypeOf(res) === app.response, stream: req instanceof IncomingMessage && res instanceof ServerResponse };
  });
  try {
    const answer = await fetch(`${listener.url}/`, { headers: { accept: 'application/json' } });
    return { ...seen, body: await answer.json() };
  } finally {
    await listener.drain(1000, 0);
  }
}

describe('the listener constructs requests and responses with the app prototypes', () => {
  it('when prototypes are given, then the server makes its requests and responses with them, still IncomingMessage / ServerResponse, and Express serves them', async () => {
    const seen = await prototypesSeen(true);
    expect(seen).toEqual({ request: true, response: true, stream: true, body: { path: '/', accepts: 'application/json' } });
  });

  it('when none are given, then Node makes its own and Express still serves them', async () => {
    const seen = await prototypesSeen(false);
    expect(seen).toEqual({ request: false, response: false, stream: true, body: { path: '/', accepts: 'application/json' } });
  });
});

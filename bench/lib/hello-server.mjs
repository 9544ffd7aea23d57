// The baselines the gateway is compared with in the same run: a "hello world" on Express 5 (the gateway's framework)
// and on bare node:http, each answering every request with a JSON body the size of an AsymmetricSign answer.
// Usage: node bench/lib/hello-server.mjs express|node:http <port>
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { ROOT } from './common.mjs';

const [kind, port] = process.argv.slice(2);
// What the gateway answers for a P-256 sign, in length: KeyId, KeyVersionId, Value (a DER signature), RequestId.
const body = JSON.stringify({
  KeyId: 'key-hzz6a1b2c3d4e5f6g7h8i9j0k1l2m3n4',
  KeyVersionId: '5b1e6c2f-6f5e-4b8e-9d3a-2f1c0b9a8e7d',
  Value: Buffer.alloc(71, 0x5a).toString('base64'),
  RequestId: '6c3e5a4b-2d1f-4e8a-9b7c-0a1b2c3d4e5f',
});

if (kind === 'express') {
  const express = createRequire(join(ROOT, 'package.json'))('express');
  const app = express();
  const payload = JSON.parse(body);
  app.all('/', (_req, res) => res.json(payload));
  app.listen(Number(port), '127.0.0.1', () => console.log('ready'));
} else {
  createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  }).listen(Number(port), '127.0.0.1', () => console.log('ready'));
}

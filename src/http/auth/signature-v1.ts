import { createHmac } from 'node:crypto';
import type { RpcRequest } from '../rpc-request.js';
import { canonicalQuery, percentEncode } from './canonical.js';

/** The parts of a V1 (HMAC-SHA1, SignatureVersion 1.0) request that authenticate it. */
interface V1Parts {
  accessKeyId: string | undefined;
  signature: string | undefined;
  nonce: string | undefined;
  timestamp: string | undefined;
  method: string | undefined;
  version: string | undefined;
}

export function v1Parts(req: RpcRequest): V1Parts {
  const p = req.params;
  return {
    accessKeyId: p.AccessKeyId,
    signature: p.Signature,
    nonce: p.SignatureNonce,
    timestamp: p.Timestamp,
    method: p.SignatureMethod,
    version: p.SignatureVersion,
  };
}

/** StringToSign = METHOD&%2F&enc(canonical(query ∪ form body − Signature)): only what the client sent. */
export function v1StringToSign(req: RpcRequest): string {
  const pairs = [...req.queryPairs, ...req.bodyPairs].filter(([k]) => k !== 'Signature');
  return `${req.method}&${percentEncode('/')}&${percentEncode(canonicalQuery(pairs))}`;
}

export function v1Sign(stringToSign: string, secret: string): string {
  return createHmac('sha1', `${secret}&`).update(stringToSign).digest('base64');
}

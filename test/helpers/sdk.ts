import { createRequire } from 'node:module';

/** The official clients, loaded as the CommonJS packages they are. */
const require = createRequire(import.meta.url);

/* eslint-disable @typescript-eslint/no-explicit-any */
const kmsModule = require('@alicloud/kms20160120');
const openApi = require('@alicloud/openapi-client');
const teaUtil = require('@alicloud/tea-util');
const PopCore = require('@alicloud/pop-core');

export interface Credentials {
  endpoint: string;
  accessKeyId: string;
  accessKeySecret: string;
}

/** `@alicloud/kms20160120` (V1 signatures, on @alicloud/rpc-client). */
export function kmsClient(c: Credentials): {
  asymmetricSign(req: Record<string, string>): Promise<any>;
  asymmetricVerify(req: Record<string, string>): Promise<any>;
  getPublicKey(req: Record<string, string>): Promise<any>;
} {
  const client = new kmsModule.default({ ...c, protocol: 'http', regionId: 'cn-hangzhou' });
  return {
    asymmetricSign: (req) => client.asymmetricSign(new kmsModule.AsymmetricSignRequest(req)),
    asymmetricVerify: (req) => client.asymmetricVerify(new kmsModule.AsymmetricVerifyRequest(req)),
    getPublicKey: (req) => client.getPublicKey(new kmsModule.GetPublicKeyRequest(req)),
  };
}

/**
 * Any KMS action through `@alicloud/kms20160120`, by name: `kms(c).call('CreateKey', { keySpec: 'EC_P256' })` runs
 * `client.createKey(new CreateKeyRequest(...))`, request and response in the SDK's own models.
 */
export function kmsAction(c: Credentials): { call(action: string, req?: Record<string, unknown>): Promise<any> } {
  const client = new kmsModule.default({ ...c, protocol: 'http', regionId: 'cn-hangzhou' });
  return {
    call: (action, req = {}) => {
      const method = action[0]!.toLowerCase() + action.slice(1);
      const Request = kmsModule[`${action}Request`];
      return Request ? client[method](new Request(req)) : client[method]();
    },
  };
}

/** `@alicloud/openapi-client` callApi, RPC style (V3 ACS3-HMAC-SHA256 signatures, or V1 with `v1: true`). */
export function openApiCall(
  c: Credentials,
  action: string,
  version: string,
  query: Record<string, string>,
  options: {
    body?: Record<string, string>;
    bodyType?: 'json' | 'string';
    /** Sign with V1 HMAC-SHA1 (the client's signatureAlgorithm 'v2') instead of V3. */
    v1?: boolean;
    /** Sent with every request, over the client's own values (e.g. a Timestamp / x-acs-date of another time). */
    globalParameters?: { queries?: Record<string, string>; headers?: Record<string, string> };
  } = {},
): Promise<{ body: any; headers: Record<string, string>; statusCode: number }> {
  const client = new openApi.default(
    new openApi.Config({
      ...c,
      protocol: 'http',
      regionId: 'cn-hangzhou',
      ...(options.v1 ? { signatureAlgorithm: 'v2' } : {}),
      ...(options.globalParameters ? { globalParameters: options.globalParameters } : {}),
    }),
  );
  const params = new openApi.Params({
    action,
    version,
    protocol: 'HTTP',
    pathname: '/',
    method: 'POST',
    authType: 'AK',
    style: 'RPC',
    reqBodyType: 'formData',
    bodyType: options.bodyType ?? 'json',
  });
  const request = new openApi.OpenApiRequest({ query, body: options.body });
  return client.callApi(params, request, new teaUtil.RuntimeOptions({}));
}

/** `@alicloud/pop-core` (V1; GET by default, POST sends every parameter in a form body). */
export function popCore(c: Credentials, apiVersion: string): { request(action: string, params: Record<string, string>, opts?: Record<string, unknown>): Promise<any> } {
  return new PopCore({ ...c, endpoint: `http://${c.endpoint}`, apiVersion });
}

const casModule = require('@alicloud/cas20200407');
const openApiCore = require('@alicloud/openapi-core');

/** `@alicloud/cas20200407` (V3 by default; `v1: true` sets signatureAlgorithm 'v2', its name for V1 HMAC-SHA1). */
export function casClient(
  c: Credentials,
  options: { v1?: boolean } = {},
): { sign(req: Record<string, string>): Promise<any>; verify(req: Record<string, string>): Promise<any> } {
  const client = new casModule.default(
    new openApiCore.$OpenApiUtil.Config({
      ...c,
      protocol: 'http',
      regionId: 'cn-hangzhou',
      ...(options.v1 ? { signatureAlgorithm: 'v2' } : {}),
    }),
  );
  return {
    sign: (req) => client.sign(new casModule.SignRequest(req)),
    verify: (req) => client.verify(new casModule.VerifyRequest(req)),
  };
}

/** Every algorithm × demo key pair served for AsymmetricSign on SoftHSM (SM2 has its own tests). */
export const DEMO_SIGN_PAIRS = [
  { alias: 'alias/demo-rsa-2048', algorithm: 'RSA_PKCS1_SHA_256', pss: false },
  { alias: 'alias/demo-rsa-2048', algorithm: 'RSA_PSS_SHA_256', pss: true },
  { alias: 'alias/demo-rsa-3072', algorithm: 'RSA_PKCS1_SHA_256', pss: false },
  { alias: 'alias/demo-rsa-3072', algorithm: 'RSA_PSS_SHA_256', pss: true },
  { alias: 'alias/demo-ec-p256', algorithm: 'ECDSA_SHA_256', pss: false },
  { alias: 'alias/demo-ec-p256k', algorithm: 'ECDSA_SHA_256', pss: false },
] as const;

/** What an official SDK call ended in: 'ok', or the error's Code, the HTTP status (the SDK writes it into its message: "code: 503, <Message> request id: …") and the Message. */
export const failureOf = (p: Promise<unknown>): Promise<{ code: string; status: number; message: string }> =>
  p.then(
    () => ({ code: 'ok', status: 200, message: '' }),
    (e: { code?: string; message?: string; data?: { Code?: string; Message?: string } }) => ({
      code: e.data?.Code ?? e.code ?? '',
      status: Number(/code: (\d{3})/.exec(e.message ?? '')?.[1] ?? 0),
      message: e.data?.Message ?? e.message ?? '',
    }),
  );

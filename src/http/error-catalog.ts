/**
 * The closed error vocabulary of the gateway: every error a client can see is one row here, and docs/errors.md and
 * the README's error table are generated from these rows (`npm run docs:errors`).
 *
 * `cloud` says how a row stands against the Alibaba Cloud answer (the KMS RPC error table and the bodies of the cloud's
 * API gateway that users quoted): `verbatim` — same code and status, and the message is the cloud's text, word for word
 * (detail never replaces it); `code` — same code and status, the cloud's text is not known, so the message is the
 * gateway's own; `gateway` — not in the cloud's error table: the gateway's own code, in the cloud's naming style.
 * `meaning` and `action` are written for the caller (docs/errors.md shows them under the code's anchor, which the body's
 * `Recommend` links to). Messages may carry a detail, never a secret or a stack.
 */
export const ERROR_CATALOG = {
  MissingParameter: {
    status: 400,
    message: 'A required parameter is missing.',
    cloud: 'code',
    meaning: 'A parameter the action needs was not sent; the message names it.',
    action: 'Send the parameter named in the message (see the action’s API reference).',
  },
  InvalidParameter: {
    status: 400,
    message: 'The specified parameter is not valid.',
    cloud: 'code',
    meaning:
      'A parameter is malformed or not allowed here: an algorithm the key spec does not take, a digest that is not Base64 or not 32 bytes, a RAW message over 4,096 bytes, a key version of another key, a key whose usage is not SIGN/VERIFY, a parameter sent twice, CAS `MessageType=BLIND`, a `SignatureNonce` longer than 64 characters. The message names the parameter and why.',
    action: 'Correct the parameter named in the message; the request is refused before any key is used.',
  },
  IncompleteSignature: {
    status: 400,
    message: 'The request signature does not conform to Alibaba Cloud standards.',
    cloud: 'code',
    meaning:
      'The request is not signed, or a part of the signature is missing or malformed: AccessKeyId, Signature, SignatureNonce, SignatureMethod (HMAC-SHA1) or SignatureVersion (1.0) for V1; the Authorization header or a header that must be signed (host, x-acs-action, x-acs-version, x-acs-date, x-acs-signature-nonce) for V3.',
    action: 'Sign the request with an official Alibaba Cloud SDK, or follow signature V1 or V3 exactly; the message says which part is missing.',
  },
  IllegalTimestamp: {
    status: 400,
    message: 'The input parameter "Timestamp" that is mandatory for processing this request is not supplied.',
    cloud: 'verbatim',
    meaning: 'The request time is missing or not in the accepted form: `Timestamp` (V1) or the `x-acs-date` header (V3) must be UTC, `YYYY-MM-DDThh:mm:ssZ`.',
    action: 'Send the request time in UTC as `YYYY-MM-DDThh:mm:ssZ` (the SDKs do).',
  },
  'InvalidTimeStamp.Expired': {
    status: 400,
    message: 'Specified time stamp or date value is expired.',
    cloud: 'verbatim',
    meaning: 'The request time is well formed but further from the gateway’s clock than the window (`auth.timestampWindowSeconds`, 15 minutes by default), in the past or in the future.',
    action: 'Synchronize the client’s clock (NTP) with the gateway’s, and do not keep signed requests to send later.',
  },
  SignatureNonceUsed: {
    status: 400,
    message: 'Specified signature nonce was used already.',
    cloud: 'verbatim',
    meaning: 'A request with this access key and this nonce (`SignatureNonce`, `x-acs-signature-nonce`) was already accepted: a replay.',
    action: 'Send a new random nonce with every request, retries included (the SDKs do).',
  },
  SignatureDoesNotMatch: {
    status: 400,
    message: 'Specified signature is not matched with our calculation.',
    cloud: 'verbatim',
    meaning:
      'The signature is not the one the gateway computes for this request with the access key’s secret. The message ends with `server string to sign is:` and the string the gateway signed (V1: the `METHOD&%2F&…` string; V3: `ACS3-HMAC-SHA256` and the hex SHA-256 of the canonical request); it holds only what the client sent, never a secret.',
    action:
      'Compare the text after the colon with the string to sign your client computed. Equal: the AccessKeySecret is wrong (the Python core SDK reports this case as `InvalidAccessKeySecret`). Different: the request was changed after signing (a proxy re-encoding it) or the client canonicalizes differently.',
  },
  DryRunOperation: {
    status: 400,
    message: 'Request validation has been passed with DryRun flag set.',
    cloud: 'gateway',
    meaning: 'The request carried `DryRun=true` and passed every check; nothing was signed.',
    action: 'None: this is the success answer of a dry run. Send the request without `DryRun` to sign.',
  },
  InvalidVersion: {
    status: 400,
    message: 'Specified parameter Version is not valid.',
    cloud: 'gateway',
    meaning: 'The API version is not one the gateway serves with this action (KMS 2016-01-20, CAS 2020-04-07).',
    action: 'Use the version of the product’s SDK: `2016-01-20` for KMS, `2020-04-07` for CAS.',
  },
  UnsupportedHTTPMethod: {
    status: 405,
    message: 'This HTTP method is not supported; use GET or POST.',
    cloud: 'gateway',
    meaning: 'The request used a method other than GET or POST.',
    action: 'Send RPC requests with GET or POST.',
  },
  RequestEntityTooLarge: {
    status: 413,
    message: 'The request body is too large.',
    cloud: 'gateway',
    meaning: 'The body is larger than `server.maxBodyBytes` (64 KiB by default).',
    action: 'Send less data (RAW messages are limited to 4 KB anyway; sign a digest instead), or ask the operator to raise `server.maxBodyBytes`.',
  },
  RequestHeaderFieldsTooLarge: {
    status: 431,
    message: 'The request line and headers are too large.',
    cloud: 'gateway',
    meaning: 'The request line (with its query string) and headers together exceed 16 KB, the HTTP parser’s limit; the request was not read.',
    action: 'Send the parameters in a POST body (the SDKs do) or shorten them; no parameter of these APIs needs that much.',
  },
  'Forbidden.NoPermission': {
    status: 403,
    message: 'This operation is forbidden by permission system.',
    cloud: 'code',
    meaning: 'The access key may not do this action on this key or certificate: the key’s `accessKeyIds` list or the access key’s RAM-style policy does not allow it, or a Deny matches.',
    action: 'Ask the operator to allow the action (`kms:<Action>` or `yundun-cert:<Action>`) on the resource for this access key.',
  },
  'Forbidden.AccessKey': {
    status: 403,
    message: 'The specified AccessKey is disabled.',
    cloud: 'code',
    meaning: 'The access key exists and the signature is right, but the key is disabled.',
    action: 'Use another access key, or ask the operator to enable this one (`accounts enable`).',
  },
  'InvalidAccessKeyId.NotFound': {
    status: 404,
    message: 'Specified access key is not found.',
    cloud: 'verbatim',
    meaning: 'The gateway knows no access key with this AccessKeyId.',
    action: 'Check the AccessKeyId the client is configured with; an access key of the cloud is not valid on the gateway.',
  },
  'InvalidAction.NotFound': {
    status: 404,
    message: 'Specified api is not found, please check your url and method.',
    cloud: 'gateway',
    meaning: 'The gateway serves no such action (or the path is not `/`).',
    action: 'Check the action name against the README’s list of served APIs, and send requests to `/`.',
  },
  'Forbidden.KeyNotFound': {
    status: 404,
    message: 'The specified Key is not found.',
    cloud: 'code',
    meaning: 'No key with this KeyId, or a key of another account (which the caller may not see).',
    action: 'Check the KeyId and that the access key belongs to the key’s account (`ListKeys` shows the keys the caller may use).',
  },
  'Forbidden.AliasNotFound': {
    status: 404,
    message: 'The specified Alias is not found.',
    cloud: 'code',
    meaning: 'No alias with this name, or one bound to a key of another account.',
    action: 'Check the alias (`alias/<name>`); `ListAliases` shows the caller’s.',
  },
  'Certificate.NotFound': {
    status: 404,
    message: 'The specified certificate is not found.',
    cloud: 'verbatim',
    meaning: 'No certificate with this CertificateId, CertIdentifier or CustomIdentifier (in this WarehouseId), or one of another account.',
    action: 'Check the identifier (and WarehouseId); CAS `ListCert` shows the caller’s certificates.',
  },
  'Rejected.Disabled': {
    status: 409,
    message: 'The key is disabled.',
    cloud: 'code',
    meaning:
      'The key (or certificate) is disabled: it may not sign. Also the answer when the HSM itself refuses the key (its CKA_SIGN is off because it was disabled or scheduled for deletion through another gateway whose change this one has not read yet).',
    action: 'Enable the key (`EnableKey`, or `CancelKeyDeletion` for a key pending deletion) or use another one.',
  },
  'Rejected.PendingDeletion': {
    status: 409,
    message: 'The key is pending deletion.',
    cloud: 'code',
    meaning: 'The key (or certificate) is scheduled for deletion: it may not be used.',
    action: 'Cancel the deletion (`CancelKeyDeletion`) if the key is still needed, or use another one.',
  },
  'Rejected.AlreadyExists': {
    status: 409,
    message: 'The specified resource already exists.',
    cloud: 'gateway',
    meaning: 'The alias, key or certificate to be created already exists (an alias: in the caller’s account; other accounts’ aliases are their own and never collide).',
    action: 'Choose another name, or change the existing one (`UpdateAlias`).',
  },
  'Rejected.UnexpectedState': {
    status: 409,
    message: 'The state of the key does not allow this operation.',
    cloud: 'gateway',
    meaning:
      'A lifecycle change the key’s state forbids (disable a key pending deletion, cancel a deletion never scheduled), or, with the registry in PostgreSQL, a change that lost to another writer changing the same key, alias or access key at the same moment (nothing of it was made).',
    action: 'Read the key’s state (`DescribeKey`) and do the step its state allows; after a lost concurrent change, read again and retry.',
  },
  'Rejected.UnsupportedOperation': {
    status: 400,
    message: 'Unsupported operation.',
    cloud: 'gateway',
    meaning: 'The gateway does not do this: a change to a key declared in the registry file, automatic rotation, a key spec no configured token can make, key management when it is off.',
    action: 'Do the change in the registry file (then `kill -HUP`), rotate with `CreateKeyVersion`, or use a key spec a token offers.',
  },
  'Rejected.Throttling': {
    status: 429,
    message: 'Request was denied due to flow control.',
    cloud: 'code',
    meaning:
      'The account sent more KMS requests per second than its limit (`throttle.defaultLimit`, 1,000 by default), or the client address failed authentication more often than `auth.failedAuth` allows.',
    action: 'Retry after `x-acs-retry-after` milliseconds (the SDKs do), or ask the operator for a higher limit; for failed authentications, fix the credentials first.',
  },
  'Throttling.User': {
    status: 429,
    message: 'Request was denied due to user flow control.',
    cloud: 'code',
    meaning:
      'The account sent more CAS requests per second than its limit (`throttle.defaultLimit`, 1,000 by default), or the client address failed authentication more often than `auth.failedAuth` allows.',
    action: 'Retry after `x-acs-retry-after` milliseconds (the SDKs do), or ask the operator for a higher limit; for failed authentications, fix the credentials first.',
  },
  InternalFailure: {
    status: 500,
    message: 'The request processing has failed due to some unknown error.',
    cloud: 'code',
    meaning: 'A fault in the gateway or an unexpected refusal of the HSM; never the answer to bad input.',
    action: 'Retry later and report it with the RequestId: the gateway’s log has the cause under that id.',
  },
  ServiceUnavailableTemporary: {
    status: 503,
    message: 'The service is temporarily unavailable. Try again later.',
    cloud: 'code',
    meaning:
      'The HSM is down or recovering, no signing session became free in time, the key is not on the token, the audit record of the request could not be written (nothing is returned without its record), its nonce could not be checked against the shared store (Redis or the cluster primary away, stalled or recovering; see the README’s "Replay protection") or written to the nonce journal, or the key registry cannot be used: its PostgreSQL store is unreachable (a change; signing goes on from the loaded registry), was unreachable since start-up (every request until it is loaded), or the registry is misconfigured (its secrets key missing on the token).',
    action: 'Retry with backoff; the gateway recovers by itself when the HSM, the audit file or the registry database is back (`/readyz` tells). Persisting: the operator checks the HSM, the audit directory and the registry store (the management listener’s `/readyz` and the log).',
  },
} as const satisfies Record<string, CatalogEntry>;

interface CatalogEntry {
  status: number;
  message: string;
  cloud: 'verbatim' | 'code' | 'gateway';
  meaning: string;
  action: string;
}

export type ErrorCode = keyof typeof ERROR_CATALOG;

/**
 * The fragment that names a code in docs/errors.md: the anchor GitHub and most Markdown renderers give the code's
 * heading (lower case, dots dropped), so `Recommend` links stay stable as long as the heading is the code.
 */
export const errorAnchor = (code: ErrorCode): string => code.toLowerCase().replace(/[^a-z0-9_-]/g, '');

/**
 * An error meant for the client: its code must be in the catalog; `detail` replaces the default message, except for a
 * code whose message is the cloud's own (`cloud: 'verbatim'`): there a detail may only follow the cloud's text.
 */
export class ApiError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  /** Extra response headers, e.g. `x-acs-retry-after` on throttling. */
  readonly headers: Record<string, string>;

  constructor(code: ErrorCode, detail?: string, options?: { cause?: unknown; headers?: Record<string, string> }) {
    super(messageOf(code, detail), { cause: options?.cause });
    this.name = 'ApiError';
    this.code = code;
    this.status = ERROR_CATALOG[code].status;
    this.headers = options?.headers ?? {};
  }
}

function messageOf(code: ErrorCode, detail: string | undefined): string {
  const entry: CatalogEntry = ERROR_CATALOG[code];
  if (detail === undefined) return entry.message;
  return entry.cloud === 'verbatim' && !detail.startsWith(entry.message) ? entry.message : detail;
}

export const missing = (name: string): ApiError =>
  new ApiError('MissingParameter', `The input parameter "${name}" that is mandatory for processing this request is not supplied.`);

export const invalid = (name: string, why: string): ApiError =>
  new ApiError('InvalidParameter', `The specified parameter "${name}" is not valid: ${why}`);

/**
 * The cloud's SignatureDoesNotMatch, word for word: the Python core SDK splits the message at ':' and compares the
 * second part with its own string to sign (equal → it reports InvalidAccessKeySecret). Both schemes' strings to sign
 * are colon-free (V1 percent-encodes every ':'; V3 is the algorithm name and a hex hash), so the split finds it whole.
 */
export const signatureDoesNotMatch = (stringToSign: string): ApiError =>
  new ApiError('SignatureDoesNotMatch', `${ERROR_CATALOG.SignatureDoesNotMatch.message} server string to sign is:${stringToSign}`);

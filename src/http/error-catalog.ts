/**
 * The closed error vocabulary of the gateway: every error a client can see is one row here.
 * Codes and statuses are the ones the official clients already understand (KMS RPC error table and the
 * generic Alibaba Cloud gateway codes). Messages may carry a detail, never a secret or a stack.
 */
export const ERROR_CATALOG = {
  MissingParameter: { status: 400, message: 'A required parameter is missing.' },
  InvalidParameter: { status: 400, message: 'The specified parameter is not valid.' },
  IncompleteSignature: { status: 400, message: 'The request signature does not conform to Alibaba Cloud standards.' },
  IllegalTimestamp: {
    status: 400,
    message: 'The input parameter "Timestamp" that is mandatory for processing this request is not supplied or is outside the allowed window.',
  },
  SignatureNonceUsed: { status: 400, message: 'The request signature nonce has been used.' },
  DryRunOperation: { status: 400, message: 'Request validation has been passed with DryRun flag set.' },
  InvalidVersion: { status: 400, message: 'Specified parameter Version is not valid.' },
  UnsupportedHTTPMethod: { status: 405, message: 'This HTTP method is not supported; use GET or POST.' },
  RequestEntityTooLarge: { status: 413, message: 'The request body is too large.' },
  UnsupportedMediaType: { status: 415, message: 'The request body must be application/x-www-form-urlencoded or empty.' },
  SignatureDoesNotMatch: {
    status: 403,
    message: 'The request signature we calculated does not match the signature you provided. Check your key and signing method.',
  },
  'Forbidden.NoPermission': { status: 403, message: 'This operation is forbidden by permission system.' },
  'Forbidden.AccessKey': { status: 403, message: 'The specified AccessKey is disabled.' },
  'InvalidAccessKeyId.NotFound': { status: 404, message: 'Specified access key is not found.' },
  'InvalidAction.NotFound': { status: 404, message: 'Specified api is not found, please check your url and method.' },
  'Forbidden.KeyNotFound': { status: 404, message: 'The specified Key is not found.' },
  'Forbidden.AliasNotFound': { status: 404, message: 'The specified Alias is not found.' },
  'Certificate.NotFound': { status: 404, message: 'The specified certificate is not found.' },
  'Rejected.Disabled': { status: 409, message: 'The key is disabled.' },
  'Rejected.PendingDeletion': { status: 409, message: 'The key is pending deletion.' },
  'Rejected.AlreadyExists': { status: 409, message: 'The specified resource already exists.' },
  'Rejected.UnexpectedState': { status: 409, message: 'The state of the key does not allow this operation.' },
  'Rejected.UnsupportedOperation': { status: 400, message: 'Unsupported operation.' },
  'Rejected.Throttling': { status: 429, message: 'Request was denied due to flow control.' },
  'Throttling.User': { status: 429, message: 'Request was denied due to user flow control.' },
  InternalFailure: { status: 500, message: 'The request processing has failed due to some unknown error.' },
  ServiceUnavailableTemporary: { status: 503, message: 'The service is temporarily unavailable. Try again later.' },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof ERROR_CATALOG;

/** An error meant for the client: its code must be in the catalog; `detail` replaces the default message. */
export class ApiError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  /** Extra response headers, e.g. `x-acs-retry-after` on throttling. */
  readonly headers: Record<string, string>;

  constructor(code: ErrorCode, detail?: string, options?: { cause?: unknown; headers?: Record<string, string> }) {
    super(detail ?? ERROR_CATALOG[code].message, { cause: options?.cause });
    this.name = 'ApiError';
    this.code = code;
    this.status = ERROR_CATALOG[code].status;
    this.headers = options?.headers ?? {};
  }
}

export const missing = (name: string): ApiError =>
  new ApiError('MissingParameter', `The input parameter "${name}" that is mandatory for processing this request is not supplied.`);

export const invalid = (name: string, why: string): ApiError =>
  new ApiError('InvalidParameter', `The specified parameter "${name}" is not valid: ${why}`);

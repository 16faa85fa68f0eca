/** What every failed call throws. */
export interface CacheErrorInit {
  /** The HTTP status; 0 when no HTTP answer was received (network error, timeout, abort). */
  status: number;
  /** The envelope's `error.code` (`cache_miss`, `rate_limited`, ...), or one of the client's own:
   * `network_error`, `timeout`, `aborted`, `service_token_in_browser`, `invalid_argument`,
   * `http_error` (an answer without the service's envelope, e.g. from a proxy). */
  code: string;
  message: string;
  /** The envelope's `requestId` (else the `X-Request-Id` header); null without an answer. */
  requestId?: string | null;
  /** From `Retry-After`, in milliseconds; null when the answer had none. */
  retryAfterMs?: number | null;
  /** The envelope's `field` on a `validation_error`. */
  field?: string | null;
  /** How many HTTP attempts the call made (retries included). */
  attempts?: number;
  cause?: unknown;
}

const RETRYABLE_STATUS = new Set([429, 503]);
const RETRYABLE_CODES = new Set(["network_error", "timeout"]);

export class CacheError extends Error {
  override readonly name = "CacheError";
  readonly status: number;
  readonly code: string;
  readonly requestId: string | null;
  readonly retryAfterMs: number | null;
  readonly field: string | null;
  readonly attempts: number;

  constructor(init: CacheErrorInit) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.status = init.status;
    this.code = init.code;
    this.requestId = init.requestId ?? null;
    this.retryAfterMs = init.retryAfterMs ?? null;
    this.field = init.field ?? null;
    this.attempts = init.attempts ?? 0;
  }

  /** True for what a retry may cure: 429, 503, network errors and timeouts. */
  get retryable(): boolean {
    return RETRYABLE_STATUS.has(this.status) || (this.status === 0 && RETRYABLE_CODES.has(this.code));
  }

  /** The same error again (each caller of a shared request gets its own instance). */
  copy(overrides: Partial<CacheErrorInit> = {}): CacheError {
    return new CacheError({
      status: this.status,
      code: this.code,
      message: this.message,
      requestId: this.requestId,
      retryAfterMs: this.retryAfterMs,
      field: this.field,
      attempts: this.attempts,
      cause: this.cause,
      ...overrides,
    });
  }
}

export function isCacheError(value: unknown): value is CacheError {
  return value instanceof CacheError;
}

// Small helpers of the client: no state, no dependency beyond the standard globals that Node.js
// (>= 18) and the Next.js server runtimes share.
import { CacheError } from "./errors.js";

/** `X/Y` in hex, as `pg_lsn` prints a WAL position: what X-Consistency-Token carries. */
const CONSISTENCY_TOKEN_RE = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/;

export function isConsistencyToken(value: string): boolean {
  return CONSISTENCY_TOKEN_RE.test(value);
}

/** A token's WAL position as one number, to keep the latest of tokens that arrive out of order. */
export function tokenPosition(token: string): bigint {
  const m = CONSISTENCY_TOKEN_RE.exec(token);
  if (!m) throw new TypeError(`not a consistency token: ${token}`);
  return (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`);
}

/** Retry-After as milliseconds (delta-seconds or an HTTP date), or null. */
export function parseRetryAfter(value: string | null, now = Date.now()): number | null {
  if (value === null) return null;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const at = Date.parse(text);
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}

/** The `role` claim of a JWT, read without verifying it (only to refuse misuse early). */
export function jwtRole(token: string): string | undefined {
  const payload = token.split(".")[1];
  if (!payload) return undefined;
  try {
    const base64 = payload.replace(/-/g, "+").replace(/_/g, "/");
    const binary = atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4));
    const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
    const claims: unknown = JSON.parse(new TextDecoder().decode(bytes));
    if (claims && typeof claims === "object" && "role" in claims) {
      const role = (claims as { role: unknown }).role;
      return typeof role === "string" ? role : undefined;
    }
  } catch {
    // not a JWT we can read: the service will refuse it, nothing to check here
  }
  return undefined;
}

export function inBrowser(): boolean {
  const g = globalThis as Record<string, unknown>;
  return typeof g["window"] !== "undefined" || typeof g["document"] !== "undefined";
}

export const SERVICE_ROLE = "service_role";

/** Throws when a service_role token would be used where a browser could read it. */
export function assertNotServiceTokenInBrowser(token: string): void {
  if (inBrowser() && jwtRole(token) === SERVICE_ROLE) {
    throw new CacheError({
      status: 0,
      code: "service_token_in_browser",
      message:
        "refusing to use a service_role token in a browser: it can read and erase every user's cache. " +
        "Create the cachesvc client in server code only (in Next.js, add `import \"server-only\"` to the " +
        "module that creates it), or use the signed-in user's own access token.",
    });
  }
}

/** A client-side refusal of an argument (status 0: no request was sent). */
export function invalidArgument(field: string, message: string): CacheError {
  return new CacheError({ status: 0, code: "validation_error", field, message });
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/**
 * What the client itself must refuse in a path part: a non-string, a lone UTF-16 surrogate
 * (it has no UTF-8 form), and `.` / `..`, which any URL parser removes as dot segments (so the
 * request would reach another route). Everything else is left to the service, which checks it.
 */
export function checkPathPart(value: unknown, field: string): string {
  if (typeof value !== "string") throw invalidArgument(field, `${field} must be a string`);
  if (LONE_SURROGATE.test(value)) throw invalidArgument(field, `${field} contains a lone UTF-16 surrogate`);
  if (value === "." || value === "..") throw invalidArgument(field, `${field} may not be '.' or '..'`);
  return value;
}

export function checkText(value: unknown, field: string): string {
  if (typeof value !== "string") throw invalidArgument(field, `${field} must be a string`);
  if (LONE_SURROGATE.test(value)) throw invalidArgument(field, `${field} contains a lone UTF-16 surrogate`);
  return value;
}

export function abortedError(signal: AbortSignal, attempts = 0): CacheError {
  return new CacheError({ status: 0, code: "aborted", message: "the call was aborted", attempts, cause: signal.reason });
}

export function timeoutError(message: string, attempts: number, cause?: unknown): CacheError {
  return new CacheError({ status: 0, code: "timeout", message, attempts, cause });
}

/** Wait `ms`, or reject with the signal's abort. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortedError(signal));
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortedError(signal as AbortSignal));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

const resolved = Promise.resolve();

/**
 * Run `fn` once every promise job queued so far has run (DataLoader's schedule): every `get`
 * issued by code that is still running, or that runs on already settled promises, joins the
 * batch. `process.nextTick` where there is one (Node.js), else a zero timer (edge runtimes).
 */
export function afterPendingJobs(fn: () => void): void {
  void resolved.then(() => {
    const proc = (globalThis as { process?: { nextTick?: (cb: () => void) => void } }).process;
    if (proc && typeof proc.nextTick === "function") proc.nextTick(fn);
    else setTimeout(fn, 0);
  });
}

/** A deep copy for the second and later callers that asked for the same entry. */
export function copyOf<T>(value: T): T {
  return typeof structuredClone === "function" ? structuredClone(value) : (JSON.parse(JSON.stringify(value)) as T);
}

export function chunks<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

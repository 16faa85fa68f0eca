// The cachesvc client: one instance per user (a user's own token, or a service token with
// `user`), made with createCacheClient. See README.md for what each method does on the wire.
import { CacheError } from "./errors.js";
import {
  abortedError,
  afterPendingJobs,
  assertNotServiceTokenInBrowser,
  checkPathPart,
  checkText,
  chunks,
  copyOf,
  invalidArgument,
  isConsistencyToken,
  parseRetryAfter,
  sleep,
  timeoutError,
  tokenPosition,
} from "./internal.js";
import type {
  CacheEntry,
  EraseResponse,
  FeatureVector,
  LeaseAnswer,
  LookupItem,
  LookupResult,
  PutBody,
  SimilarRequest,
  SimilarResponse,
  SimilarResult,
  StatsResponse,
} from "./types.js";

/** The most items one lookup request may carry (the service refuses more). */
export const MAX_BATCH = 100;

export type TokenSource = string | (() => string | Promise<string>);
export type FetchLike = (input: string, init: RequestInit) => Promise<Response>;

export interface CacheClientOptions {
  /** The service's base URL, e.g. `http://cachesvc.internal:8080`. */
  baseUrl: string;
  /** The bearer token: the user's own access token, or a service_role token together with
   * `user`; or a function returning one (called before every attempt, so it may refresh). */
  token: TokenSource;
  /** Sent as `X-Cache-User`: the user a service_role token acts for. */
  user?: string;
  /** Longest wait for one HTTP attempt, body included (default 10000). */
  timeoutMs?: number;
  /** Retries after the first attempt of an idempotent call (default 2; erase is never retried). */
  retries?: number;
  /** Default overall budget of one call, retries and their waits included (default 30000). */
  deadlineMs?: number;
  /** Backoff: the first retry waits up to this (full jitter), doubling up to `retryMaxMs`
   * (defaults 100 and 5000); never less than a Retry-After says. */
  retryBaseMs?: number;
  retryMaxMs?: number;
  /** The `fetch` to use (default: the global one). */
  fetch?: FetchLike;
  /** The latest consistency token this user's writes returned (e.g. kept in the session). */
  consistencyToken?: string | null;
  /** Called whenever the client's latest consistency token moves forward. */
  onConsistencyToken?: (token: string) => void;
  /** Coalesce concurrent `get`s into lookups (default true). */
  coalesce?: boolean;
  /** Most items of one coalesced lookup (1 to 100, default 100). */
  maxBatchSize?: number;
}

export interface CallOptions {
  /** Aborts the call (any attempt, and any wait between attempts). */
  signal?: AbortSignal;
  /** Overall budget of this call in milliseconds, retries included (default: the client's). */
  deadlineMs?: number;
  /** Sent as `X-Request-Id` on every attempt (1-128 of `[A-Za-z0-9._-]`), to find it in logs. */
  requestId?: string;
}

export interface GenerateContext {
  contentType: string;
  key: string;
  signal?: AbortSignal;
}

export interface GetOrGenerateOptions extends CallOptions {
  /** How long the lease lasts if this caller never stores (1 to 300 s, default 30). */
  leaseSeconds?: number;
  /** Longest time to wait for another caller's generation before generating here (default 15000). */
  maxWaitMs?: number;
  /** TTL of the stored entry (overrides the body's `ttlSeconds`). */
  ttlSeconds?: number;
}

export interface PutResult {
  entry: CacheEntry;
  /** true for 201 (a new entry), false for 200 (replaced the live one). */
  created: boolean;
}

/** `maxDistance` (0-2, cosine) and `limit` (1-20) of a similarity search. */
export type SimilarSearch = Omit<SimilarRequest, "embedding">;

export interface FeaturesClient {
  /** One entity's features from the named tables (default: every table). */
  get(entityKey: string, tables?: readonly string[], options?: CallOptions): Promise<FeatureVector>;
  /** Many entities, results in request order (split into requests of at most 100). */
  lookup(entityKeys: readonly string[], tables?: readonly string[], options?: CallOptions): Promise<FeatureVector[]>;
}

export interface CacheClient {
  /** The live entry, or null on a miss. Concurrent gets are coalesced into lookups. */
  get(contentType: string, key: string, options?: CallOptions): Promise<CacheEntry | null>;
  put(contentType: string, key: string, body: PutBody, options?: CallOptions): Promise<PutResult>;
  /** true when an entry was deleted, false when there was none. */
  delete(contentType: string, key: string, options?: CallOptions): Promise<boolean>;
  /** Results in request order (split into requests of at most 100). */
  lookup(items: readonly LookupItem[], options?: CallOptions): Promise<LookupResult[]>;
  /** Erase every entry and statistic of the user (never retried). */
  erase(options?: CallOptions): Promise<EraseResponse>;
  stats(options?: CallOptions): Promise<StatsResponse>;
  /** Semantic cache: the caller's live entries nearest to `embedding` (cosine distance), nearest
   * first, within `maxDistance` (default: the service's setting); `limit` 1-20 (default 1). */
  similar(contentType: string, embedding: readonly number[], search?: SimilarSearch, options?: CallOptions): Promise<SimilarResult[]>;
  /** The entry, generated and stored at most once across concurrent callers (a lease). */
  getOrGenerate(
    contentType: string,
    key: string,
    generate: (context: GenerateContext) => PutBody | Promise<PutBody>,
    options?: GetOrGenerateOptions,
  ): Promise<CacheEntry>;
  readonly features: FeaturesClient;
  /** The latest consistency token this client got from a write (or was given), or null. */
  readonly consistencyToken: string | null;
}

interface RequestSpec {
  method: "GET" | "PUT" | "POST" | "DELETE";
  path: string;
  body?: unknown;
  headers?: Record<string, string>;
  /** Idempotent: retried on 429, 503, network errors and timeouts. */
  retry: boolean;
  /** Carries the latest consistency token. */
  read?: boolean;
  /** Answers with a consistency token to keep. */
  write?: boolean;
  /** Added to the per-attempt timeout (a long poll). */
  extraTimeoutMs?: number;
}

interface Answer {
  status: number;
  headers: Headers;
  body: unknown;
}

/** One caller of `get`, waiting for its batch. */
interface Waiter {
  contentType: string;
  key: string;
  deadlineMs: number;
  settled: boolean;
  resolve(entry: CacheEntry | null): void;
  reject(error: unknown): void;
  cleanup(): void;
  batch?: { controller: AbortController; waiters: Waiter[] };
}

const keyPath = (contentType: string, key: string): string =>
  `${encodeURIComponent(checkPathPart(contentType, "contentType"))}/${encodeURIComponent(checkPathPart(key, "key"))}`;
const entryPath = (contentType: string, key: string): string => `/v1/cache/${keyPath(contentType, key)}`;
/** The generate-once lease of an entry: POST takes (or waits for) it, DELETE gives it up. */
const leasePath = (contentType: string, key: string): string => `/v1/leases/${keyPath(contentType, key)}`;

const LEASE_WAIT_MAX_MS = 10_000;

function isMiss(err: unknown): boolean {
  return err instanceof CacheError && err.status === 404 && err.code === "cache_miss";
}

function nonNegative(value: number | undefined, fallback: number, name: string): number {
  const v = value ?? fallback;
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0) throw new TypeError(`${name} must be a number >= 0`);
  return v;
}

class Client implements CacheClient {
  readonly features: FeaturesClient;
  private readonly baseUrl: string;
  private readonly tokenSource: TokenSource;
  private readonly user: string | undefined;
  private readonly timeoutMs: number;
  private readonly retries: number;
  private readonly deadlineMs: number;
  private readonly retryBaseMs: number;
  private readonly retryMaxMs: number;
  private readonly fetchImpl: FetchLike;
  private readonly onConsistencyToken: ((token: string) => void) | undefined;
  private readonly coalesce: boolean;
  private readonly maxBatchSize: number;
  private latestToken: string | null;
  private queue: Waiter[] = [];
  private scheduled = false;

  constructor(options: CacheClientOptions) {
    if (!options || typeof options.baseUrl !== "string" || !/^https?:\/\//.test(options.baseUrl)) {
      throw new TypeError("baseUrl must be an http(s) URL");
    }
    if (typeof options.token !== "string" && typeof options.token !== "function") {
      throw new TypeError("token must be a string or a function returning one");
    }
    if (typeof options.token === "string") assertNotServiceTokenInBrowser(options.token);
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.tokenSource = options.token;
    this.user = options.user;
    this.timeoutMs = nonNegative(options.timeoutMs, 10_000, "timeoutMs");
    if (this.timeoutMs === 0) throw new TypeError("timeoutMs must be more than 0");
    this.retries = Math.floor(nonNegative(options.retries, 2, "retries"));
    this.deadlineMs = nonNegative(options.deadlineMs, 30_000, "deadlineMs");
    this.retryBaseMs = nonNegative(options.retryBaseMs, 100, "retryBaseMs");
    this.retryMaxMs = nonNegative(options.retryMaxMs, 5_000, "retryMaxMs");
    const fetchImpl = options.fetch ?? (globalThis.fetch as FetchLike | undefined);
    if (typeof fetchImpl !== "function") throw new TypeError("no fetch: pass options.fetch (Node.js >= 18 has one)");
    this.fetchImpl = fetchImpl;
    const initial = options.consistencyToken ?? null;
    if (initial !== null && !isConsistencyToken(initial)) {
      throw new TypeError("consistencyToken must be a token a write returned (like 0/1A2B3C8)");
    }
    this.latestToken = initial;
    this.onConsistencyToken = options.onConsistencyToken;
    this.coalesce = options.coalesce ?? true;
    const batch = Math.floor(options.maxBatchSize ?? MAX_BATCH);
    if (!(batch >= 1 && batch <= MAX_BATCH)) throw new TypeError(`maxBatchSize must be between 1 and ${MAX_BATCH}`);
    this.maxBatchSize = batch;
    this.features = {
      get: (entityKey, tables, opts) => this.featureGet(entityKey, tables, opts),
      lookup: (entityKeys, tables, opts) => this.featureLookup(entityKeys, tables, opts),
    };
  }

  get consistencyToken(): string | null {
    return this.latestToken;
  }

  // -- the cache ------------------------------------------------------------------------------

  get(contentType: string, key: string, options: CallOptions = {}): Promise<CacheEntry | null> {
    try {
      checkPathPart(contentType, "contentType");
      checkPathPart(key, "key");
    } catch (err) {
      return Promise.reject(err);
    }
    if (!this.coalesce) return this.getOne(contentType, key, options);
    return new Promise<CacheEntry | null>((resolve, reject) => {
      const { signal } = options;
      if (signal?.aborted) {
        reject(abortedError(signal));
        return;
      }
      const deadlineMs = options.deadlineMs ?? this.deadlineMs;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const waiter: Waiter = {
        contentType,
        key,
        deadlineMs,
        settled: false,
        resolve,
        reject,
        cleanup: () => {
          if (timer !== undefined) clearTimeout(timer);
          signal?.removeEventListener("abort", onAbort);
        },
      };
      // Giving up affects this caller only; the batch's request is cancelled once all gave up.
      const giveUp = (error: CacheError) => {
        if (waiter.settled) return;
        waiter.settled = true;
        waiter.cleanup();
        reject(error);
        const batch = waiter.batch;
        if (batch && batch.waiters.every((w) => w.settled)) batch.controller.abort();
      };
      const onAbort = () => giveUp(abortedError(signal as AbortSignal));
      signal?.addEventListener("abort", onAbort, { once: true });
      if (Number.isFinite(deadlineMs)) {
        timer = setTimeout(() => giveUp(timeoutError(`deadline of ${deadlineMs} ms exceeded`, 0)), deadlineMs);
      }
      this.queue.push(waiter);
      if (!this.scheduled) {
        this.scheduled = true;
        afterPendingJobs(() => this.flush());
      }
    });
  }

  async put(contentType: string, key: string, body: PutBody, options: CallOptions = {}): Promise<PutResult> {
    return this.putEntry(contentType, key, body, options);
  }

  async delete(contentType: string, key: string, options: CallOptions = {}): Promise<boolean> {
    const spec: RequestSpec = { method: "DELETE", path: entryPath(contentType, key), retry: true, write: true };
    try {
      await this.send(spec, options);
      return true;
    } catch (err) {
      if (isMiss(err)) return false;
      throw err;
    }
  }

  async lookup(items: readonly LookupItem[], options: CallOptions = {}): Promise<LookupResult[]> {
    if (!Array.isArray(items)) throw invalidArgument("items", "items must be an array");
    const parts = await Promise.all(chunks(items, MAX_BATCH).map((part) => this.lookupChunk(part, options)));
    return parts.flat();
  }

  async erase(options: CallOptions = {}): Promise<EraseResponse> {
    const answer = await this.send({ method: "DELETE", path: "/v1/cache", retry: false, write: true }, options);
    return answer.body as EraseResponse;
  }

  async stats(options: CallOptions = {}): Promise<StatsResponse> {
    const answer = await this.send({ method: "GET", path: "/v1/cache/stats", retry: true }, options);
    return answer.body as StatsResponse;
  }

  async similar(
    contentType: string, embedding: readonly number[], search: SimilarSearch = {}, options: CallOptions = {},
  ): Promise<SimilarResult[]> {
    if (!Array.isArray(embedding)) throw invalidArgument("embedding", "embedding must be an array of numbers");
    const body = { embedding, ...search };
    const path = `/v1/cache/${encodeURIComponent(checkPathPart(contentType, "contentType"))}/similar`;
    const answer = await this.send({ method: "POST", path, body, retry: true, read: true }, options);
    return (answer.body as SimilarResponse).results;
  }

  // -- generate once ------------------------------------------------------------------------

  async getOrGenerate(
    contentType: string,
    key: string,
    generate: (context: GenerateContext) => PutBody | Promise<PutBody>,
    options: GetOrGenerateOptions = {},
  ): Promise<CacheEntry> {
    if (typeof generate !== "function") throw invalidArgument("generate", "generate must be a function");
    const leaseSeconds = options.leaseSeconds ?? 30;
    if (!Number.isInteger(leaseSeconds) || leaseSeconds < 1 || leaseSeconds > 300) {
      throw invalidArgument("leaseSeconds", "leaseSeconds must be a whole number from 1 to 300");
    }
    const maxWaitMs = nonNegative(options.maxWaitMs, 15_000, "maxWaitMs");
    const path = leasePath(contentType, key);
    const started = Date.now();
    let waitMs = 0; // the first ask answers at once; later ones long-poll
    for (;;) {
      const asked = Date.now();
      const answer = await this.lease(path, leaseSeconds, waitMs, options);
      if (answer === "unsupported") {
        // A service without leases: read, and on a miss generate and store (no single flight).
        const entry = await this.get(contentType, key, options);
        if (entry) return entry;
        return this.generateAndPut(contentType, key, generate, options, undefined);
      }
      if (answer.status === "hit") return answer.entry;
      if (answer.status === "granted") {
        return this.generateAndPut(contentType, key, generate, options, answer.leaseId);
      }
      // "wait": someone else is generating. Ask again (a long poll) until a hit, a grant (their
      // lease ran out) or maxWaitMs; then generate here rather than hang or fail.
      let left = maxWaitMs - (Date.now() - started);
      if (left > 0 && waitMs > 0 && Date.now() - asked < waitMs / 2) {
        // The service answered long before the poll's end: do not spin against it.
        await sleep(Math.min(Math.max(answer.retryAfterMs ?? 0, 100), left), options.signal);
        left = maxWaitMs - (Date.now() - started);
      }
      if (left <= 0) return this.generateAndPut(contentType, key, generate, options, undefined);
      waitMs = Math.min(Math.ceil(left), LEASE_WAIT_MAX_MS); // whole milliseconds, as the service wants
    }
  }

  private async lease(
    path: string,
    leaseSeconds: number,
    waitMs: number,
    options: CallOptions,
  ): Promise<(LeaseAnswer & { retryAfterMs: number | null }) | "unsupported"> {
    const spec: RequestSpec = {
      method: "POST",
      path,
      body: { leaseSeconds, waitMs },
      retry: true,
      read: true,
      extraTimeoutMs: waitMs,
    };
    let answer: Answer;
    try {
      answer = await this.send(spec, { ...options, deadlineMs: (options.deadlineMs ?? this.deadlineMs) + waitMs });
    } catch (err) {
      // An older service: no such route (404 not_found; 405 if a route of that path refuses POST).
      if (err instanceof CacheError && ((err.status === 404 && err.code === "not_found") || err.status === 405)) {
        return "unsupported";
      }
      throw err;
    }
    const body = answer.body as Partial<LeaseAnswer> & { entry?: CacheEntry; leaseId?: string } | undefined;
    const retryAfterMs = parseRetryAfter(answer.headers.get("retry-after"));
    if (answer.status === 200 && body?.status === "hit" && body.entry) {
      return { status: "hit", entry: body.entry, retryAfterMs };
    }
    if (answer.status === 201 && body?.status === "granted" && typeof body.leaseId === "string") {
      return { status: "granted", leaseId: body.leaseId, expiresAt: String(body.expiresAt), retryAfterMs };
    }
    if (answer.status === 202 && body?.status === "wait") {
      return { status: "wait", expiresAt: typeof body.expiresAt === "string" ? body.expiresAt : null, retryAfterMs };
    }
    throw new CacheError({
      status: answer.status,
      code: "invalid_response",
      message: `unexpected lease answer ${answer.status}: ${JSON.stringify(body)}`,
      requestId: answer.headers.get("x-request-id"),
    });
  }

  private async generateAndPut(
    contentType: string,
    key: string,
    generate: (context: GenerateContext) => PutBody | Promise<PutBody>,
    options: GetOrGenerateOptions,
    leaseId: string | undefined,
  ): Promise<CacheEntry> {
    let body: PutBody;
    try {
      const context: GenerateContext = { contentType, key };
      if (options.signal) context.signal = options.signal;
      body = await generate(context);
      if (options.ttlSeconds !== undefined) body = { ...body, ttlSeconds: options.ttlSeconds };
      return (await this.putEntry(contentType, key, body, options, leaseId)).entry;
    } catch (err) {
      // Hand the lease back at once, so that a waiter generates now rather than at its expiry.
      if (leaseId !== undefined) await this.releaseLease(contentType, key, leaseId).catch(() => false);
      throw err;
    }
  }

  /** `DELETE /v1/leases/{contentType}/{key}`: true when released, false when it was no longer held. */
  private async releaseLease(contentType: string, key: string, leaseId: string): Promise<boolean> {
    const spec: RequestSpec = {
      method: "DELETE",
      path: leasePath(contentType, key),
      headers: { "X-Cache-Lease": leaseId },
      retry: true,
    };
    try {
      await this.send(spec, {});
      return true;
    } catch (err) {
      if (err instanceof CacheError && err.status === 404 && err.code === "lease_not_found") return false;
      throw err;
    }
  }

  private async putEntry(
    contentType: string,
    key: string,
    body: PutBody,
    options: CallOptions,
    leaseId?: string,
  ): Promise<PutResult> {
    const spec: RequestSpec = { method: "PUT", path: entryPath(contentType, key), body, retry: true, write: true };
    if (leaseId !== undefined) spec.headers = { "X-Cache-Lease": leaseId };
    const answer = await this.send(spec, options);
    return { entry: answer.body as CacheEntry, created: answer.status === 201 };
  }

  // -- features ---------------------------------------------------------------------------------

  private async featureGet(entityKey: string, tables: readonly string[] | undefined, options: CallOptions = {}): Promise<FeatureVector> {
    checkText(entityKey, "entityKey");
    if (entityKey.includes("/") || entityKey === "." || entityKey === "..") {
      // Not expressible as a path segment: the lookup route takes any key in its body.
      const [vector] = await this.featureLookup([entityKey], tables, options);
      if (!vector) throw new CacheError({ status: 200, code: "invalid_response", message: "empty feature lookup" });
      return vector;
    }
    let path = `/v1/features/${encodeURIComponent(entityKey)}`;
    if (tables !== undefined) path += `?tables=${tables.map((t) => encodeURIComponent(t)).join(",")}`;
    return (await this.send({ method: "GET", path, retry: true }, options)).body as FeatureVector;
  }

  private async featureLookup(
    entityKeys: readonly string[],
    tables: readonly string[] | undefined,
    options: CallOptions = {},
  ): Promise<FeatureVector[]> {
    if (!Array.isArray(entityKeys)) throw invalidArgument("entityKeys", "entityKeys must be an array");
    const parts = await Promise.all(
      chunks(entityKeys, MAX_BATCH).map(async (part) => {
        const body = tables === undefined ? { entityKeys: part } : { entityKeys: part, tables };
        const answer = await this.send({ method: "POST", path: "/v1/features/lookup", body, retry: true }, options);
        return (answer.body as { results: FeatureVector[] }).results;
      }),
    );
    return parts.flat();
  }

  // -- coalesced reads --------------------------------------------------------------------------

  private async getOne(contentType: string, key: string, options: CallOptions): Promise<CacheEntry | null> {
    try {
      return (await this.send({ method: "GET", path: entryPath(contentType, key), retry: true, read: true }, options))
        .body as CacheEntry;
    } catch (err) {
      if (isMiss(err)) return null;
      throw err;
    }
  }

  private async lookupChunk(items: readonly LookupItem[], options: CallOptions): Promise<LookupResult[]> {
    const body = { items: items.map(({ contentType, key }) => ({ contentType, key })) };
    const answer = await this.send({ method: "POST", path: "/v1/cache/lookup", body, retry: true, read: true }, options);
    const results = (answer.body as { results?: LookupResult[] } | undefined)?.results;
    if (!Array.isArray(results) || results.length !== items.length) {
      throw new CacheError({
        status: answer.status,
        code: "invalid_response",
        message: "the lookup answered a different number of results than items asked",
        requestId: answer.headers.get("x-request-id"),
      });
    }
    return results;
  }

  /** Send what the gets of this tick asked: one request per chunk of distinct (contentType, key). */
  private flush(): void {
    const waiting = this.queue;
    this.queue = [];
    this.scheduled = false;
    const groups = new Map<string, Waiter[]>();
    for (const waiter of waiting) {
      if (waiter.settled) continue;
      const id = JSON.stringify([waiter.contentType, waiter.key]);
      const group = groups.get(id);
      if (group) group.push(waiter);
      else groups.set(id, [waiter]);
    }
    for (const part of chunks([...groups.values()], this.maxBatchSize)) {
      const controller = new AbortController();
      const batch = { controller, waiters: part.flat() };
      for (const waiter of batch.waiters) waiter.batch = batch;
      void this.runBatch(part, controller.signal);
    }
  }

  /**
   * One lookup for several distinct items, a plain GET for one. A 400 naming an item
   * (`items[3].key`) fails that item's callers only and the others are asked again; a 400
   * naming none is answered by asking each item on its own. Other errors fail every caller,
   * each with its own CacheError.
   */
  private async runBatch(groups: Waiter[][], signal: AbortSignal): Promise<void> {
    const live = groups.filter((group) => group.some((w) => !w.settled));
    if (live.length === 0) return;
    const options: CallOptions = { signal, deadlineMs: Math.max(...live.flat().map((w) => w.deadlineMs)) };
    if (live.length === 1) {
      const group = live[0] as Waiter[];
      const first = group[0] as Waiter;
      try {
        deliver(group, await this.getOne(first.contentType, first.key, options));
      } catch (err) {
        fail(group, err);
      }
      return;
    }
    let results: LookupResult[];
    try {
      results = await this.lookupChunk(live.map((g) => ({ contentType: (g[0] as Waiter).contentType, key: (g[0] as Waiter).key })), options);
    } catch (err) {
      if (err instanceof CacheError && err.status === 400) {
        const named = /^items\[(\d+)\]\.(contentType|key)$/.exec(err.field ?? "");
        const bad = named ? Number(named[1]) : -1;
        if (named && bad < live.length) {
          fail(live[bad] as Waiter[], err.copy({ field: named[2] as string }));
          await this.runBatch(live.filter((_, i) => i !== bad), signal);
        } else {
          await Promise.all(live.map((group) => this.runBatch([group], signal)));
        }
        return;
      }
      for (const group of live) fail(group, err);
      return;
    }
    live.forEach((group, i) => {
      const result = results[i];
      deliver(group, result && result.hit && result.entry ? result.entry : null);
    });
  }

  // -- the wire ---------------------------------------------------------------------------------

  private async resolveToken(): Promise<string> {
    const token = typeof this.tokenSource === "function" ? await this.tokenSource() : this.tokenSource;
    if (typeof token !== "string" || token === "") throw new TypeError("the token function returned no token");
    assertNotServiceTokenInBrowser(token);
    return token;
  }

  private keepToken(token: string | null): void {
    if (token === null || !isConsistencyToken(token)) return;
    if (this.latestToken !== null && tokenPosition(token) <= tokenPosition(this.latestToken)) return;
    this.latestToken = token;
    this.onConsistencyToken?.(token);
  }

  private backoffMs(retry: number): number {
    const cap = Math.min(this.retryMaxMs, this.retryBaseMs * 2 ** (retry - 1));
    return Math.random() * cap; // full jitter
  }

  /** One call: attempts with timeouts, retries with backoff, within the deadline. */
  private async send(spec: RequestSpec, options: CallOptions): Promise<Answer> {
    const { signal } = options;
    const deadlineMs = options.deadlineMs ?? this.deadlineMs;
    const deadline = Date.now() + deadlineMs;
    const attemptsAllowed = spec.retry ? this.retries + 1 : 1;
    for (let attempt = 1; ; attempt++) {
      if (signal?.aborted) throw abortedError(signal, attempt - 1);
      let error: CacheError;
      try {
        return await this.attempt(spec, signal, options.requestId, deadline, deadlineMs, attempt);
      } catch (err) {
        if (!(err instanceof CacheError)) throw err;
        error = err;
      }
      if (!error.retryable || attempt >= attemptsAllowed) throw error;
      const wait = Math.max(this.backoffMs(attempt), error.retryAfterMs ?? 0);
      if (Date.now() + wait >= deadline) throw error; // no time left to wait as long as asked
      await sleep(wait, signal).catch((err: unknown) => {
        throw err instanceof CacheError ? err.copy({ attempts: attempt }) : err;
      });
    }
  }

  private async attempt(
    spec: RequestSpec,
    signal: AbortSignal | undefined,
    requestId: string | undefined,
    deadline: number,
    deadlineMs: number,
    attempt: number,
  ): Promise<Answer> {
    const token = await this.resolveToken();
    const remaining = deadline - Date.now();
    if (remaining <= 0) throw timeoutError(`deadline of ${deadlineMs} ms exceeded`, attempt - 1);
    const perAttempt = this.timeoutMs + (spec.extraTimeoutMs ?? 0);
    const limit = Math.min(perAttempt, remaining);
    const headers: Record<string, string> = { Accept: "application/json", Authorization: `Bearer ${token}`, ...spec.headers };
    if (this.user !== undefined) headers["X-Cache-User"] = this.user;
    if (requestId !== undefined) headers["X-Request-Id"] = requestId;
    if (spec.read && this.latestToken !== null) headers["X-Consistency-Token"] = this.latestToken;
    const init: RequestInit = { method: spec.method, headers, cache: "no-store" };
    if (spec.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(spec.body);
    }
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, limit);
    const onAbort = () => controller.abort();
    signal?.addEventListener("abort", onAbort, { once: true });
    init.signal = controller.signal;
    let res: Response;
    let text: string;
    try {
      res = await this.fetchImpl(this.baseUrl + spec.path, init);
      text = await res.text();
    } catch (err) {
      if (signal?.aborted) throw abortedError(signal, attempt);
      if (timedOut) {
        const why = limit < perAttempt ? `deadline of ${deadlineMs} ms exceeded` : `no answer within ${perAttempt} ms`;
        throw timeoutError(`${spec.method} ${spec.path}: ${why}`, attempt, err);
      }
      const cause = err instanceof Error && err.cause instanceof Error ? `: ${err.cause.message}` : "";
      throw new CacheError({
        status: 0,
        code: "network_error",
        message: `${spec.method} ${spec.path}: ${err instanceof Error ? err.message : String(err)}${cause}`,
        attempts: attempt,
        cause: err,
      });
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    }
    let body: unknown;
    let parsed = true;
    try {
      body = text === "" ? undefined : JSON.parse(text);
    } catch {
      parsed = false;
    }
    const answeredId = res.headers.get("x-request-id");
    if (res.ok) {
      if (!parsed) {
        throw new CacheError({ status: res.status, code: "invalid_response", message: "the answer is not JSON", requestId: answeredId, attempts: attempt });
      }
      if (spec.write) this.keepToken(res.headers.get("x-consistency-token"));
      return { status: res.status, headers: res.headers, body };
    }
    const detail = parsed ? (body as { error?: { code?: unknown; message?: unknown; requestId?: unknown; field?: unknown } } | undefined)?.error : undefined;
    const envelope = detail && typeof detail.code === "string";
    throw new CacheError({
      status: res.status,
      code: envelope ? (detail.code as string) : "http_error",
      message: envelope && typeof detail.message === "string" ? detail.message : `HTTP ${res.status}`,
      requestId: envelope && typeof detail.requestId === "string" ? detail.requestId : answeredId,
      field: envelope && typeof detail.field === "string" ? detail.field : null,
      retryAfterMs: parseRetryAfter(res.headers.get("retry-after")),
      attempts: attempt,
    });
  }
}

function deliver(group: Waiter[], entry: CacheEntry | null): void {
  let first = true;
  for (const waiter of group) {
    if (waiter.settled) continue;
    waiter.settled = true;
    waiter.cleanup();
    waiter.resolve(entry === null || first ? entry : copyOf(entry));
    first = false;
  }
}

function fail(group: Waiter[], error: unknown): void {
  for (const waiter of group) {
    if (waiter.settled) continue;
    waiter.settled = true;
    waiter.cleanup();
    waiter.reject(error instanceof CacheError ? error.copy() : error);
  }
}

/** Make a client for one user (its own token, or a service token with `user`). */
export function createCacheClient(options: CacheClientOptions): CacheClient {
  return new Client(options);
}

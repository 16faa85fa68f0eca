// A typed client for cachesvc, as the Next.js server code would write it. Every type comes
// from src/api.d.ts, which `npm run generate` makes from the service's live /openapi.json:
// if the service's contract changes, this file stops compiling.
import type { components } from "./api.js";

export type CacheEntry = components["schemas"]["CacheEntry"];
export type PutEntry = components["schemas"]["PutEntry"];
export type LookupItem = components["schemas"]["LookupItem"];
export type LookupResponse = components["schemas"]["LookupResponse"];
export type EraseResponse = components["schemas"]["EraseResponse"];
export type StatsResponse = components["schemas"]["StatsResponse"];
export type ErrorDetail = components["schemas"]["ErrorDetail"];

export class CacheError extends Error {
  constructor(
    readonly status: number,
    readonly detail: ErrorDetail,
  ) {
    super(`${status} ${detail.code}: ${detail.message}`);
  }
}

export class CacheClient {
  constructor(
    private readonly baseUrl: string,
    private readonly token: string,
    private readonly actAsUser?: string, // with a service_role token: the user to act for
  ) {}

  private async call<T>(method: string, path: string, body?: unknown): Promise<{ status: number; data: T | undefined }> {
    const headers: Record<string, string> = { Authorization: `Bearer ${this.token}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (this.actAsUser) headers["X-Cache-User"] = this.actAsUser;
    const init: RequestInit = { method, headers };
    if (body !== undefined) init.body = JSON.stringify(body);
    const res = await fetch(this.baseUrl + path, init);
    if (res.status === 204) return { status: 204, data: undefined };
    const json = (await res.json()) as unknown;
    if (!res.ok) throw new CacheError(res.status, (json as components["schemas"]["ErrorBody"]).error);
    return { status: res.status, data: json as T };
  }

  private static entryPath(contentType: string, key: string): string {
    return `/v1/cache/${encodeURIComponent(contentType)}/${encodeURIComponent(key)}`;
  }

  /** The live entry, or null on a miss. */
  async get(contentType: string, key: string): Promise<CacheEntry | null> {
    try {
      return (await this.call<CacheEntry>("GET", CacheClient.entryPath(contentType, key))).data ?? null;
    } catch (err) {
      if (err instanceof CacheError && err.detail.code === "cache_miss") return null;
      throw err;
    }
  }

  /** Store an entry; `created` is false when it replaced a live one. */
  async put(contentType: string, key: string, entry: PutEntry): Promise<{ created: boolean; entry: CacheEntry }> {
    const { status, data } = await this.call<CacheEntry>("PUT", CacheClient.entryPath(contentType, key), entry);
    return { created: status === 201, entry: data as CacheEntry };
  }

  /** True when an entry was deleted, false when there was none. */
  async delete(contentType: string, key: string): Promise<boolean> {
    try {
      await this.call<never>("DELETE", CacheClient.entryPath(contentType, key));
      return true;
    } catch (err) {
      if (err instanceof CacheError && err.detail.code === "cache_miss") return false;
      throw err;
    }
  }

  async lookup(items: LookupItem[]): Promise<LookupResponse> {
    return (await this.call<LookupResponse>("POST", "/v1/cache/lookup", { items })).data as LookupResponse;
  }

  async erase(): Promise<EraseResponse> {
    return (await this.call<EraseResponse>("DELETE", "/v1/cache")).data as EraseResponse;
  }

  async stats(): Promise<StatsResponse> {
    return (await this.call<StatsResponse>("GET", "/v1/cache/stats")).data as StatsResponse;
  }
}

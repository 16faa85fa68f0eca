// A consumer of the package by its name, as a Next.js server module would use it. The suite
// type-checks it (NodeNext and Bundler resolution) and then runs it: it must compile and run.
import { CacheError, createCacheClient, isCacheError, MAX_BATCH } from "@cachesvc/client";
import type { CacheClient, CacheEntry, GetOrGenerateOptions, LookupResult, PutBody } from "@cachesvc/client";

export function clientFor(userJwt: string): CacheClient {
  return createCacheClient({ baseUrl: "http://127.0.0.1:1", token: userJwt, timeoutMs: 2000, retries: 1 });
}

export async function chapter(client: CacheClient, storyId: string, n: number): Promise<string> {
  const options: GetOrGenerateOptions = { leaseSeconds: 60, maxWaitMs: 10_000, ttlSeconds: 86_400 };
  const entry: CacheEntry = await client.getOrGenerate(
    "chapter",
    `${storyId}/ch-${n}`,
    async (): Promise<PutBody> => ({ content: { text: "..." }, tokenCount: 1800, costUsd: 0.027, model: "model-x" }),
    options,
  );
  const hit: CacheEntry | null = await client.get("chapter", `${storyId}/ch-${n}`);
  const results: LookupResult[] = await client.lookup([{ contentType: "chapter", key: "k" }]);
  const { entry: stored, created }: { entry: CacheEntry; created: boolean } = await client.put("chapter", "k", { content: 1 });
  const deleted: boolean = await client.delete("chapter", "k");
  const { deleted: erased }: { deleted: number } = await client.erase();
  const features = await client.features.lookup(["e1"], ["user_features"]);
  return `${String(entry.content)} ${hit?.tokenCount} ${results.length} ${stored.key} ${created} ${deleted} ${erased} ${features.length}`;
}

export function describe(err: unknown): string {
  if (err instanceof CacheError) return `${err.status} ${err.code} ${err.requestId ?? "-"} ${err.retryAfterMs ?? "-"} ${err.message}`;
  return isCacheError(err) ? "never" : String(err);
}

const client = clientFor("not-a-jwt");
const error = await client.get("chapter", "k").then(() => null, (err: unknown) => err);
console.log(`resolved ${typeof createCacheClient} ${MAX_BATCH} ${describe(error)}`);

// Retries, Retry-After, timeouts and deadlines against real faults. One scenario per run:
//   node faults.mjs rate_limited   CACHESVC_URL: a service with a bucket of 2 requests, 1/s
//   node faults.mjs unavailable    CACHESVC_URL: a service whose every database request is a 503
//   node faults.mjs hung           CACHESVC_URL: a stopped (SIGSTOP) service; CLOSED_URL: no listener
// TOKENS: a JSON list of tokens of fresh users (rate limits are per user).
import { check, createCacheClient, done, env, expect, recorder, rejects } from "./lib.mjs";

const scenario = process.argv[2];
const url = env("CACHESVC_URL");
const tokens = JSON.parse(env("TOKENS"));
let nextToken = 0;
const freshToken = () => {
  const token = tokens[nextToken++];
  if (!token) throw new Error("out of fresh tokens");
  return token;
};
const gap = (calls, i) => calls[i].start - calls[i - 1].end; // ms between an answer and the next attempt

/** Use up a user's bucket: requests until one is refused with 429. */
async function exhaust(token) {
  for (let i = 0; i < 10; i++) {
    const res = await fetch(`${url}/v1/cache/chapter/burst`, { headers: { Authorization: `Bearer ${token}` } });
    await res.arrayBuffer();
    if (res.status === 429) return;
  }
  throw new Error("the bucket never ran out");
}

if (scenario === "rate_limited") {
  await check("429 without retries: a CacheError with retryAfterMs from Retry-After", async () => {
    const token = freshToken();
    await exhaust(token);
    const r = recorder();
    const c = createCacheClient({ baseUrl: url, token, retries: 0, fetch: r.fetch });
    await rejects(c.put("chapter", "k", { content: 1 }),
      (e) => e.status === 429 && e.code === "rate_limited" && e.retryAfterMs === 1000 && e.attempts === 1 && e.requestId, "429");
    expect(r.calls.length === 1, `one attempt, got ${r.calls.length}`);
  });

  await check("429 is retried, never sooner than Retry-After, and then succeeds", async () => {
    const token = freshToken();
    await exhaust(token);
    const r = recorder();
    const c = createCacheClient({ baseUrl: url, token, retries: 3, retryBaseMs: 1, retryMaxMs: 1, fetch: r.fetch });
    const { created } = await c.put("chapter", "k", { content: 1 });
    expect(created, "stored after the wait");
    expect(r.calls[0].status === 429 && r.calls.at(-1).status === 201, r.calls.map((x) => x.status).join());
    for (let i = 1; i < r.calls.length; i++) expect(gap(r.calls, i) >= 1000, `attempt ${i + 1} came ${gap(r.calls, i)} ms after a Retry-After of 1 s`);
  });

  await check("erase is not retried, even on 429", async () => {
    const token = freshToken();
    await exhaust(token);
    const r = recorder();
    const c = createCacheClient({ baseUrl: url, token, retries: 5, fetch: r.fetch });
    await rejects(c.erase(), (e) => e.status === 429 && e.attempts === 1, "erase");
    expect(r.calls.length === 1, `one attempt, got ${r.calls.length}`);
  });

  await check("a deadline shorter than Retry-After gives up at once with the 429", async () => {
    const token = freshToken();
    await exhaust(token);
    const r = recorder();
    const c = createCacheClient({ baseUrl: url, token, retries: 5, fetch: r.fetch });
    const started = Date.now();
    await rejects(c.get("chapter", "k", { deadlineMs: 500 }), (e) => e.status === 429 && e.retryAfterMs === 1000, "get");
    expect(Date.now() - started < 450 && r.calls.length === 1, `gave up after ${Date.now() - started} ms, ${r.calls.length} attempts`);
  });
} else if (scenario === "unavailable") {
  await check("503 is retried after Retry-After, then surfaces with its fields", async () => {
    const r = recorder();
    const c = createCacheClient({ baseUrl: url, token: freshToken(), retries: 1, retryBaseMs: 1, retryMaxMs: 1, fetch: r.fetch });
    const err = await rejects(c.get("chapter", "k"), (e) => e.status === 503 && e.code === "unavailable" && e.attempts === 2, "get");
    expect(err.retryAfterMs === 2000 && typeof err.requestId === "string", `retryAfterMs ${err.retryAfterMs}`);
    expect(r.calls.length === 2 && gap(r.calls, 1) >= 2000, `2 attempts 2 s apart: ${r.calls.length}, ${gap(r.calls, 1)} ms`);
  });

  await check("PUT, DELETE and lookup are retried; erase is not", async () => {
    const r = recorder();
    const c = createCacheClient({ baseUrl: url, token: freshToken(), retries: 1, deadlineMs: 60_000, fetch: r.fetch });
    const count = (path, method) => r.calls.filter((x) => x.method === method && x.path === path).length;
    await Promise.all([
      rejects(c.put("chapter", "p", { content: 1 }), (e) => e.status === 503 && e.attempts === 2, "put"),
      rejects(c.delete("chapter", "d"), (e) => e.status === 503 && e.attempts === 2, "delete"),
      rejects(c.lookup([{ contentType: "chapter", key: "l" }]), (e) => e.status === 503 && e.attempts === 2, "lookup"),
      rejects(c.erase(), (e) => e.status === 503 && e.attempts === 1, "erase"),
    ]);
    expect(count("/v1/cache/chapter/p", "PUT") === 2 && count("/v1/cache/chapter/d", "DELETE") === 2, "put and delete twice");
    expect(count("/v1/cache/lookup", "POST") === 2 && count("/v1/cache", "DELETE") === 1, "lookup twice, erase once");
  });

  await check("an abort during the wait between attempts ends the call at once", async () => {
    const c = createCacheClient({ baseUrl: url, token: freshToken(), retries: 3 });
    const ctl = new AbortController();
    setTimeout(() => ctl.abort(), 300);
    const started = Date.now();
    await rejects(c.lookup([{ contentType: "chapter", key: "k" }], { signal: ctl.signal }), (e) => e.code === "aborted" && e.attempts === 1, "lookup");
    expect(Date.now() - started < 1500, `ended ${Date.now() - started} ms after the start (Retry-After is 2 s)`);
  });

  await check("coalesced gets: each caller gets its own 503", async () => {
    const c = createCacheClient({ baseUrl: url, token: freshToken(), retries: 0 });
    const settled = await Promise.allSettled([c.get("chapter", "a"), c.get("chapter", "b"), c.get("chapter", "c")]);
    expect(settled.every((s) => s.status === "rejected" && s.reason.status === 503 && s.reason.retryAfterMs === 2000), "all 503");
    expect(new Set(settled.map((s) => s.reason)).size === 3, "three error objects");
  });
} else if (scenario === "hung") {
  await check("a service that never answers: per-attempt timeout, retried, then status 0 timeout", async () => {
    const r = recorder();
    const c = createCacheClient({ baseUrl: url, token: freshToken(), timeoutMs: 300, retries: 1, retryBaseMs: 1, retryMaxMs: 1, fetch: r.fetch });
    const started = Date.now();
    const err = await rejects(c.get("chapter", "k"), (e) => e.status === 0 && e.code === "timeout" && e.attempts === 2, "get");
    const took = Date.now() - started;
    expect(r.calls.length === 2 && took >= 600 && took < 3000, `2 attempts in ${took} ms (${r.calls.length})`);
    expect(err.requestId === null && err.retryAfterMs === null, "no answer, no request id");
  });

  await check("the overall deadline ends the call whatever timeoutMs says", async () => {
    const c = createCacheClient({ baseUrl: url, token: freshToken(), timeoutMs: 10_000, retries: 5 });
    const started = Date.now();
    const err = await rejects(c.stats({ deadlineMs: 400 }), (e) => e.code === "timeout" && e.status === 0, "stats");
    const took = Date.now() - started;
    expect(took >= 390 && took < 1500 && /deadline/.test(err.message), `${took} ms: ${err.message}`);
  });

  await check("an abort signal ends an attempt in flight", async () => {
    const c = createCacheClient({ baseUrl: url, token: freshToken(), timeoutMs: 10_000 });
    const started = Date.now();
    await rejects(c.put("chapter", "k", { content: 1 }, { signal: AbortSignal.timeout(200) }), (e) => e.code === "aborted" && e.status === 0, "put");
    expect(Date.now() - started < 1500, `${Date.now() - started} ms`);
  });

  await check("erase times out once, without a retry", async () => {
    const r = recorder();
    const c = createCacheClient({ baseUrl: url, token: freshToken(), timeoutMs: 200, retries: 3, fetch: r.fetch });
    await rejects(c.erase(), (e) => e.code === "timeout" && e.attempts === 1, "erase");
    expect(r.calls.length === 1, `one attempt, got ${r.calls.length}`);
  });

  await check("connection refused: network_error with status 0, retried", async () => {
    const r = recorder();
    const c = createCacheClient({ baseUrl: env("CLOSED_URL"), token: freshToken(), retries: 2, retryBaseMs: 1, retryMaxMs: 5, fetch: r.fetch });
    const err = await rejects(c.get("chapter", "k"), (e) => e.status === 0 && e.code === "network_error" && e.attempts === 3, "get");
    expect(r.calls.length === 3 && /ECONNREFUSED|fetch failed/.test(err.message), `${r.calls.length}: ${err.message}`);
  });
} else {
  console.log(`unknown scenario ${scenario}`);
  process.exit(2);
}

done();

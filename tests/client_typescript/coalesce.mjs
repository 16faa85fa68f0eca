// Coalesced gets against the live service: what goes on the wire, that each caller gets its
// own result or its own error, and what it saves (printed as a MEASURE line).
// Environment: CACHESVC_URL (a service without rate limiting), TOKEN_A, TOKEN_B (fresh users),
// TOKEN_A_EXPIRED.
import { CacheError, check, createCacheClient, done, env, expect, recorder, rejects } from "./lib.mjs";

const url = env("CACHESVC_URL");
const N = 200; // concurrent gets
const HITS = 100; // of them hits: k-0 .. k-99; the rest (k-100 .. k-199) are misses

const seed = createCacheClient({ baseUrl: url, token: env("TOKEN_A") });
await seed.lookup([{ contentType: "chapter", key: "warm-up" }]);
for (let i = 0; i < HITS; i += 20) {
  await Promise.all(Array.from({ length: 20 }, (_, j) => seed.put("chapter", `k-${i + j}`, { content: { n: i + j } })));
}

function checkResults(results) {
  results.forEach((entry, i) => {
    if (i < HITS) expect(entry !== null && entry.key === `k-${i}` && entry.content.n === i, `caller ${i} got ${JSON.stringify(entry)}`);
    else expect(entry === null, `caller ${i} must miss, got ${JSON.stringify(entry)}`);
  });
}

async function run(coalesce, rounds = 5) {
  const r = recorder();
  const c = createCacheClient({ baseUrl: url, token: env("TOKEN_A"), fetch: r.fetch, coalesce });
  const times = [];
  for (let round = 0; round < rounds; round++) {
    r.reset();
    const started = performance.now();
    const results = await Promise.all(Array.from({ length: N }, (_, i) => c.get("chapter", `k-${i}`)));
    times.push(performance.now() - started);
    checkResults(results);
  }
  times.sort((x, y) => x - y);
  return { requests: r.calls.length, calls: [...r.calls], medianMs: Math.round(times[Math.floor(times.length / 2)] * 10) / 10 };
}

const measure = {};

await check(`${N} concurrent gets go out as ${N / 100} lookups of 100, each caller with its own result`, async () => {
  const on = await run(true);
  expect(on.requests === 2, `expected 2 requests, got ${on.requests}`);
  expect(on.calls.every((x) => x.method === "POST" && x.path === "/v1/cache/lookup" && x.body.items.length === 100), "two lookups of 100 items");
  const asked = on.calls.flatMap((x) => x.body.items.map((it) => it.key)).sort();
  expect(new Set(asked).size === N, "every key asked once");
  measure.coalesced = { requests: on.requests, medianMs: on.medianMs };
});

await check(`without coalescing the same ${N} gets are ${N} requests`, async () => {
  const off = await run(false);
  expect(off.requests === N && off.calls.every((x) => x.method === "GET"), `expected ${N} GETs, got ${off.requests}`);
  measure.uncoalesced = { requests: off.requests, medianMs: off.medianMs };
});

await check("duplicate keys are asked once; each caller still gets its own copy", async () => {
  const r = recorder();
  const c = createCacheClient({ baseUrl: url, token: env("TOKEN_A"), fetch: r.fetch });
  const results = await Promise.all(Array.from({ length: N }, (_, i) => c.get("chapter", `k-${i % 50}`)));
  expect(r.calls.length === 1 && r.calls[0].body.items.length === 50, `one lookup of 50 distinct items, got ${r.calls.map((x) => x.body?.items.length)}`);
  results.forEach((entry, i) => expect(entry?.content.n === i % 50, `caller ${i}`));
  results[0].content.n = -1;
  expect(results[50].content.n === 0, "callers must not share one object");
  measure.duplicates = { gets: N, distinct: 50, requests: r.calls.length };
});

await check("a lone get is a plain GET; gets in separate ticks are separate requests", async () => {
  const r = recorder();
  const c = createCacheClient({ baseUrl: url, token: env("TOKEN_A"), fetch: r.fetch });
  expect((await c.get("chapter", "k-1"))?.content.n === 1, "hit");
  expect((await c.get("chapter", "k-150")) === null, "miss");
  expect(r.calls.length === 2 && r.calls.every((x) => x.method === "GET"), r.calls.map((x) => `${x.method} ${x.path}`).join());
});

await check("gets issued after an await on settled promises still join the batch", async () => {
  const r = recorder();
  const c = createCacheClient({ baseUrl: url, token: env("TOKEN_A"), fetch: r.fetch });
  const viaHelper = async (i) => {
    await Promise.resolve(); // as an app helper would (awaits on something already there)
    await null;
    return c.get("chapter", `k-${i}`);
  };
  const results = await Promise.all([c.get("chapter", "k-0"), ...Array.from({ length: 9 }, (_, i) => viaHelper(i + 1))]);
  expect(r.calls.length === 1 && r.calls[0].body.items.length === 10, `one lookup of 10, got ${r.calls.map((x) => x.body?.items.length)}`);
  results.forEach((entry, i) => expect(entry?.content.n === i, `caller ${i}`));
});

await check("maxBatchSize splits a tick's gets into lookups of that size", async () => {
  const r = recorder();
  const c = createCacheClient({ baseUrl: url, token: env("TOKEN_A"), fetch: r.fetch, maxBatchSize: 30 });
  checkResults(await Promise.all(Array.from({ length: N }, (_, i) => c.get("chapter", `k-${i}`))));
  const sizes = r.calls.map((x) => x.body.items.length);
  expect(sizes.length === 7 && sizes.every((n) => n <= 30), `sizes ${sizes}`);
});

await check("a bad item fails its own callers only; the rest are answered", async () => {
  const r = recorder();
  const c = createCacheClient({ baseUrl: url, token: env("TOKEN_A"), fetch: r.fetch });
  const settled = await Promise.allSettled([
    c.get("chapter", "k-1"),
    c.get("Bad-Type", "k-2"),
    c.get("chapter", "x".repeat(513)),
    c.get("chapter", "k-3"),
    c.get("chapter", "k-150"),
    c.get("chapter", "a/../b"),
  ]);
  const [ok1, badType, tooLong, ok3, miss, dots] = settled;
  expect(ok1.status === "fulfilled" && ok1.value.content.n === 1, "k-1 answered");
  expect(ok3.status === "fulfilled" && ok3.value.content.n === 3, "k-3 answered");
  expect(miss.status === "fulfilled" && miss.value === null, "k-150 a miss");
  for (const [name, s, field] of [["bad type", badType, "contentType"], ["too long", tooLong, "key"], ["dot segment", dots, "key"]]) {
    expect(s.status === "rejected" && s.reason instanceof CacheError && s.reason.status === 400 && s.reason.code === "validation_error" && s.reason.field === field,
      `${name}: ${s.status} ${s.reason?.status} ${s.reason?.field}`);
  }
  expect(badType.reason !== tooLong.reason, "each caller gets its own error object");
  expect(r.calls.length <= 4, `at most one lookup per bad item plus one, got ${r.calls.length}`);
});

await check("an error of the whole request reaches every caller, each with its own instance", async () => {
  const r = recorder();
  const expired = createCacheClient({ baseUrl: url, token: env("TOKEN_A_EXPIRED"), fetch: r.fetch });
  const settled = await Promise.allSettled([expired.get("chapter", "k-1"), expired.get("chapter", "k-2"), expired.get("chapter", "k-3")]);
  expect(settled.every((s) => s.status === "rejected" && s.reason instanceof CacheError && s.reason.status === 401), "all 401");
  expect(new Set(settled.map((s) => s.reason)).size === 3, "three distinct errors");
  expect(r.calls.length === 1, `one request, got ${r.calls.length}`);
});

await check("two users' gets in the same tick are two requests that never mix", async () => {
  const rb = recorder();
  const b = createCacheClient({ baseUrl: url, token: env("TOKEN_B"), fetch: rb.fetch });
  const ra = recorder();
  const a = createCacheClient({ baseUrl: url, token: env("TOKEN_A"), fetch: ra.fetch });
  const [fromA, fromB] = await Promise.all([
    Promise.all(Array.from({ length: 10 }, (_, i) => a.get("chapter", `k-${i}`))),
    Promise.all(Array.from({ length: 10 }, (_, i) => b.get("chapter", `k-${i}`))),
  ]);
  expect(fromA.every((e, i) => e?.content.n === i), "A sees A's entries");
  expect(fromB.every((e) => e === null), "B sees none of A's entries");
  expect(ra.calls.length === 1 && rb.calls.length === 1, "one lookup each");
});

await check("one caller's deadline gives up that caller only", async () => {
  const c = createCacheClient({ baseUrl: url, token: env("TOKEN_A") });
  const impatient = c.get("chapter", "k-1", { deadlineMs: 0 });
  const patient = c.get("chapter", "k-2");
  await rejects(impatient, (e) => e.code === "timeout" && e.status === 0, "deadline 0");
  expect((await patient)?.content.n === 2, "the other caller is answered");
});

console.log(`MEASURE ${JSON.stringify(measure)}`);
done();

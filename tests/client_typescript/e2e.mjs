// @cachesvc/client end to end against the live service: every method, errors, identity and
// the forbidden paths, consistency tokens, features, the browser guard, getOrGenerate.
// Environment: CACHESVC_URL; USER_A/TOKEN_A, USER_B/TOKEN_B (fresh users); TOKEN_SERVICE;
// TOKEN_A_EXPIRED and TOKEN_A_FORGED (signed with another secret).
import { CacheError, check, createCacheClient, done, env, expect, header, recorder, rejects } from "./lib.mjs";

const url = env("CACHESVC_URL");
const userA = env("USER_A");
const userB = env("USER_B");
const rec = recorder();
const a = createCacheClient({ baseUrl: url, token: env("TOKEN_A"), fetch: rec.fetch });
const b = createCacheClient({ baseUrl: url, token: env("TOKEN_B") });
const service = createCacheClient({ baseUrl: url, token: env("TOKEN_SERVICE"), user: userA });

await check("put stores a new entry (created) and replaces it (not created)", async () => {
  const first = await a.put("chapter", "story/1", {
    content: { title: "The Beginning", words: 1200 },
    metadata: { prompt: "v3" },
    ttlSeconds: 3600,
    tokenCount: 1500,
    costUsd: 0.021,
    model: "model-x",
  });
  expect(first.created === true, "first put must be created");
  expect(first.entry.key === "story/1" && first.entry.tokenCount === 1500 && first.entry.model === "model-x", "entry echoed");
  const second = await a.put("chapter", "story/1", { content: "second draft", tokenCount: 7 });
  expect(second.created === false, "second put must replace");
  expect(second.entry.content === "second draft", "replaced content");
});

await check("get returns the entry, and null on a miss without throwing", async () => {
  const entry = await a.get("chapter", "story/1");
  expect(entry !== null && entry.content === "second draft" && entry.contentType === "chapter", JSON.stringify(entry));
  expect((await a.get("chapter", "never-stored")) === null, "a miss is null");
});

await check("keys with '/', spaces, '?', '#', '%', '+' and non-ASCII round-trip", async () => {
  const keys = ["a/b/c", "with space", "q?x=1&y=2", "hash#frag", "100%25 done%", "plus+sign", "ünïcødé/日本語/🙂"];
  for (const key of keys) {
    const { entry } = await a.put("chapter", key, { content: key });
    expect(entry.key === key, `put echoed ${entry.key} for ${key}`);
  }
  for (const key of keys) expect((await a.get("chapter", key))?.content === key, `get ${key}`);
  const results = await a.lookup(keys.map((key) => ({ contentType: "chapter", key })));
  expect(results.every((r, i) => r.hit && r.key === keys[i] && r.entry?.content === keys[i]), "lookup of the same keys");
  for (const key of keys) expect(await a.delete("chapter", key), `delete ${key}`);
});

await check("delete is true once, then false (a miss, not an error)", async () => {
  await a.put("chapter", "to-delete", { content: 1 });
  expect((await a.delete("chapter", "to-delete")) === true, "first delete");
  expect((await a.delete("chapter", "to-delete")) === false, "second delete");
});

await check("lookup answers in request order, and splits more than 100 items", async () => {
  await a.put("chapter", "lk-1", { content: "one" });
  const small = await a.lookup([
    { contentType: "chapter", key: "lk-missing" },
    { contentType: "chapter", key: "lk-1" },
  ]);
  expect(small.length === 2 && small[0].hit === false && small[1].hit === true && small[1].entry.content === "one", JSON.stringify(small));
  rec.reset();
  const items = Array.from({ length: 150 }, (_, i) => ({ contentType: "chapter", key: i === 120 ? "lk-1" : `lk-none-${i}` }));
  const big = await a.lookup(items);
  expect(big.length === 150, `150 results, got ${big.length}`);
  expect(big.every((r, i) => r.key === items[i].key && r.hit === (i === 120)), "order and hits");
  const posts = rec.calls.filter((c) => c.path === "/v1/cache/lookup");
  expect(posts.length === 2 && posts.every((c) => c.body.items.length <= 100), `two requests of <= 100 items: ${posts.map((c) => c.body.items.length)}`);
  expect((await a.lookup([])).length === 0, "an empty lookup is empty");
});

await check("stats answers the user's counters", async () => {
  const stats = await a.stats();
  expect(typeof stats.hits === "number" && typeof stats.misses === "number" && Array.isArray(stats.byContentType), JSON.stringify(stats));
});

await check("a 400 is a CacheError with status, code, field, requestId, not retried", async () => {
  rec.reset();
  const err = await rejects(a.put("Not-A-Type", "k", { content: 1 }), (e) => e.status === 400 && e.code === "validation_error", "bad contentType");
  expect(err.field === "contentType", `field ${err.field}`);
  expect(typeof err.requestId === "string" && err.requestId.length > 0, "requestId");
  expect(err.message.length > 0 && err.retryAfterMs === null, "message, no Retry-After");
  expect(err.attempts === 1 && rec.calls.length === 1, `one attempt, got ${rec.calls.length}`);
  expect(err instanceof Error && err.name === "CacheError", "an Error named CacheError");
});

await check("keys no URL can carry are refused before any request", async () => {
  rec.reset();
  for (const key of [".", ".."]) {
    await rejects(a.get("chapter", key), (e) => e.status === 0 && e.code === "validation_error" && e.field === "key", `get ${key}`);
    await rejects(a.put("chapter", key, { content: 1 }), (e) => e.status === 0 && e.code === "validation_error", `put ${key}`);
    await rejects(a.delete("chapter", key), (e) => e.status === 0 && e.code === "validation_error", `delete ${key}`);
  }
  await rejects(a.get("chapter", "lone\ud800"), (e) => e.status === 0 && e.field === "key", "lone surrogate");
  expect(rec.calls.length === 0, `no request may be sent, got ${rec.calls.map((c) => c.path)}`);
});

await check("a request id given is sent on the request and comes back on errors", async () => {
  rec.reset();
  const err = await rejects(a.put("Bad", "k", { content: 1 }, { requestId: "my-req.42" }), (e) => e.status === 400, "400");
  expect(header(rec.calls[0], "X-Request-Id") === "my-req.42" && err.requestId === "my-req.42", `requestId ${err.requestId}`);
});

// -- identity and the forbidden paths -----------------------------------------------------------

await check("another user cannot read, look up, delete or erase A's entry", async () => {
  await a.put("chapter", "secret", { content: "A only" });
  expect((await b.get("chapter", "secret")) === null, "B's get must miss");
  const [result] = await b.lookup([{ contentType: "chapter", key: "secret" }]);
  expect(result.hit === false && !result.entry, "B's lookup must miss");
  expect((await b.delete("chapter", "secret")) === false, "B's delete must find nothing");
  expect((await b.erase()).deleted === 0, "B's erase must erase nothing of A");
  expect((await a.get("chapter", "secret"))?.content === "A only", "A's entry is still there");
});

await check("coalesced gets of two users in the same tick never mix", async () => {
  await b.put("chapter", "shared-key", { content: "B's" });
  await a.put("chapter", "shared-key", { content: "A's" });
  const [fromA, fromB, missA, missB] = await Promise.all([
    a.get("chapter", "shared-key"),
    b.get("chapter", "shared-key"),
    a.get("chapter", "secret-nobody"),
    b.get("chapter", "secret"),
  ]);
  expect(fromA?.content === "A's" && fromB?.content === "B's", `${fromA?.content} / ${fromB?.content}`);
  expect(missA === null && missB === null, "B must not see A's secret through a batch");
});

await check("an expired token is a 401, not retried", async () => {
  const r = recorder();
  const expired = createCacheClient({ baseUrl: url, token: env("TOKEN_A_EXPIRED"), fetch: r.fetch, retries: 3 });
  await rejects(expired.get("chapter", "secret"), (e) => e.status === 401 && e.code === "unauthorized" && e.attempts === 1, "expired get");
  await rejects(expired.put("chapter", "secret", { content: "overwrite" }), (e) => e.status === 401, "expired put");
  expect(r.calls.length === 2, `one request each, got ${r.calls.length}`);
  expect((await a.get("chapter", "secret"))?.content === "A only", "nothing was overwritten");
});

await check("a forged token (another secret) is a 401 for every method", async () => {
  const forged = createCacheClient({ baseUrl: url, token: env("TOKEN_A_FORGED") });
  await rejects(forged.get("chapter", "secret"), (e) => e.status === 401 && e.code === "unauthorized", "forged get");
  await rejects(forged.lookup([{ contentType: "chapter", key: "secret" }]), (e) => e.status === 401, "forged lookup");
  await rejects(forged.delete("chapter", "secret"), (e) => e.status === 401, "forged delete");
  await rejects(forged.erase(), (e) => e.status === 401, "forged erase");
  expect((await a.get("chapter", "secret"))?.content === "A only", "A's entry survived");
});

await check("a service token acts for the user it names, and needs one", async () => {
  expect((await service.get("chapter", "secret"))?.content === "A only", "service reads A's entry");
  const bare = createCacheClient({ baseUrl: url, token: env("TOKEN_SERVICE") });
  await rejects(bare.get("chapter", "secret"), (e) => e.status === 400, "service token without user");
  const forB = createCacheClient({ baseUrl: url, token: env("TOKEN_SERVICE"), user: userB });
  expect((await forB.get("chapter", "secret")) === null, "acting for B shows B's entries only");
});

await check("a user token naming another user is a 403", async () => {
  const sneaky = createCacheClient({ baseUrl: url, token: env("TOKEN_B"), user: userA });
  await rejects(sneaky.get("chapter", "secret"), (e) => e.status === 403 && e.code === "forbidden", "B acting for A");
  await rejects(sneaky.delete("chapter", "secret"), (e) => e.status === 403, "B deleting as A");
});

await check("a token function is called for each request and may be async", async () => {
  let calls = 0;
  const c = createCacheClient({ baseUrl: url, token: async () => { calls++; return env("TOKEN_A"); } });
  await c.get("chapter", "secret");
  await c.stats();
  expect(calls === 2, `token function called ${calls} times`);
});

// -- consistency ----------------------------------------------------------------------------------

await check("writes' consistency tokens are kept (the latest) and sent with reads only", async () => {
  // as B: this check ends with an erase
  const r = recorder();
  const seen = [];
  const c = createCacheClient({ baseUrl: url, token: env("TOKEN_B"), fetch: r.fetch, onConsistencyToken: (t) => seen.push(t) });
  expect(c.consistencyToken === null, "no token before a write");
  await c.get("chapter", "ct-1");
  expect(header(r.calls[0], "X-Consistency-Token") === undefined, "no header before any write");
  const res = await fetch(`${url}/v1/cache/chapter/ct-probe`, { method: "PUT", headers: { Authorization: `Bearer ${env("TOKEN_B")}`, "Content-Type": "application/json" }, body: '{"content":0}' });
  const raw = res.headers.get("x-consistency-token");
  expect(/^[0-9A-F]+\/[0-9A-F]+$/i.test(raw ?? ""), `the service answers writes with a token: ${raw}`);
  r.reset();
  await c.put("chapter", "ct-1", { content: 1 });
  const t1 = c.consistencyToken;
  expect(t1 !== null && /^[0-9A-F]+\/[0-9A-F]+$/i.test(t1), `token after put: ${t1}`);
  expect(seen.at(-1) === t1, "onConsistencyToken told");
  await c.get("chapter", "ct-1");
  await c.lookup([{ contentType: "chapter", key: "ct-1" }]);
  await Promise.all([c.get("chapter", "ct-1"), c.get("chapter", "ct-2")]); // a coalesced lookup
  const reads = r.calls.filter((x) => x.method === "GET" || x.path === "/v1/cache/lookup");
  expect(reads.length === 3 && reads.every((x) => header(x, "X-Consistency-Token") === t1), "every read carries the token");
  const writes = r.calls.filter((x) => x.method === "PUT");
  expect(writes.every((x) => header(x, "X-Consistency-Token") === undefined), "writes do not send it");
  expect(await c.delete("chapter", "ct-1"), "delete");
  const t2 = c.consistencyToken;
  expect(t2 !== t1, `delete moves the token (${t1} -> ${t2})`);
  await c.put("chapter", "ct-x", { content: 1 });
  await c.erase();
  const t3 = c.consistencyToken;
  expect(t3 !== t2 && seen.at(-1) === t3, `erase moves the token (${t2} -> ${t3})`);
});

await check("the highest token is kept when an older write answers last", async () => {
  // A fetch that holds the first answer back: the first PUT commits first (lower WAL position)
  // but its answer reaches the client after the second PUT's.
  let release;
  const held = new Promise((resolve) => { release = resolve; });
  const r = recorder();
  let n = 0;
  const reordering = async (input, init) => {
    const res = await r.fetch(input, init);
    if (n++ === 0) await held;
    return res;
  };
  const c = createCacheClient({ baseUrl: url, token: env("TOKEN_A"), fetch: reordering });
  const position = (t) => { const [hi, lo] = t.split("/"); return (BigInt(`0x${hi}`) << 32n) | BigInt(`0x${lo}`); };
  const first = c.put("chapter", "order-1", { content: 1 });
  while (r.calls[0]?.status === undefined) await new Promise((resolve) => setTimeout(resolve, 5));
  await c.put("chapter", "order-2", { content: 2 });
  const [older, newer] = r.calls.map((x) => x.responseHeaders["x-consistency-token"]);
  expect(position(newer) > position(older), `the second write is later: ${older} < ${newer}`);
  expect(c.consistencyToken === newer, `after the newer answer: ${c.consistencyToken}`);
  release();
  await first;
  expect(c.consistencyToken === newer, `the older answer arriving last must not win: kept ${c.consistencyToken}, newer ${newer}`);
});

await check("a token given at creation is sent with the first read; a malformed one is refused", async () => {
  const writer = createCacheClient({ baseUrl: url, token: env("TOKEN_A") });
  await writer.put("chapter", "handoff", { content: "written by process 1" });
  const r = recorder();
  const reader = createCacheClient({ baseUrl: url, token: env("TOKEN_A"), fetch: r.fetch, consistencyToken: writer.consistencyToken });
  expect((await reader.get("chapter", "handoff"))?.content === "written by process 1", "read the write");
  expect(header(r.calls[0], "X-Consistency-Token") === writer.consistencyToken, "sent the handed-over token");
  let threw = false;
  try {
    createCacheClient({ baseUrl: url, token: env("TOKEN_A"), consistencyToken: "not-a-token" });
  } catch (err) {
    threw = err instanceof TypeError;
  }
  expect(threw, "a malformed token must be refused at creation");
});

// -- the browser guard ----------------------------------------------------------------------------

await check("a service_role token is refused in a browser, at creation or first call", async () => {
  for (const name of ["window", "document"]) {
    globalThis[name] = {};
    try {
      let error;
      try {
        createCacheClient({ baseUrl: url, token: env("TOKEN_SERVICE"), user: userA });
      } catch (err) {
        error = err;
      }
      expect(error instanceof CacheError && error.code === "service_token_in_browser" && /server-only/.test(error.message), `${name}: creation must throw, got ${error}`);
      const r = recorder();
      const lazy = createCacheClient({ baseUrl: url, token: () => env("TOKEN_SERVICE"), user: userA, fetch: r.fetch });
      await rejects(lazy.get("chapter", "secret"), (e) => e.code === "service_token_in_browser", `${name}: first call`);
      await rejects(lazy.erase(), (e) => e.code === "service_token_in_browser", `${name}: erase`);
      expect(r.calls.length === 0, "nothing may be sent with it");
      const user = createCacheClient({ baseUrl: url, token: env("TOKEN_A") });
      expect((await user.get("chapter", "secret"))?.content === "A only", "a user's own token still works");
    } finally {
      delete globalThis[name];
    }
  }
  expect((await service.get("chapter", "secret"))?.content === "A only", "on the server the service token works");
});

// -- features -----------------------------------------------------------------------------------

await check("features: get and lookup in order; '/' keys go by lookup; users are refused", async () => {
  const r = recorder();
  const svc = createCacheClient({ baseUrl: url, token: env("TOKEN_SERVICE"), fetch: r.fetch });
  const one = await svc.features.get("entity-1");
  expect(one.entityKey === "entity-1" && typeof one.features === "object", JSON.stringify(one));
  const many = await svc.features.lookup(["e/1", "e2", "e3"]);
  expect(many.map((v) => v.entityKey).join() === "e/1,e2,e3", JSON.stringify(many));
  r.reset();
  const slash = await svc.features.get("a/b");
  expect(slash.entityKey === "a/b" && r.calls[0].path === "/v1/features/lookup", `went to ${r.calls[0]?.path}`);
  r.reset();
  const keys = Array.from({ length: 150 }, (_, i) => `bulk-${i}`);
  const bulk = await svc.features.lookup(keys);
  expect(bulk.length === 150 && bulk.every((v, i) => v.entityKey === keys[i]) && r.calls.length === 2, "150 keys in two requests, in order");
  await rejects(svc.features.get("entity-1", ["no_such_table"]), (e) => e.status === 400 && e.field === "tables", "unknown table");
  await rejects(a.features.get("entity-1"), (e) => e.status === 403 && e.code === "forbidden", "a user token");
});

// -- getOrGenerate (either way the service answers) -------------------------------------------------

await check("getOrGenerate: a miss generates and stores once, a hit does not generate", async () => {
  // Either way the service answers: with the lease route (201 granted, then 200 hit), or an
  // older service without it (404/405 on the lease route: get, generate, put).
  const r = recorder();
  const c = createCacheClient({ baseUrl: url, token: env("TOKEN_A"), fetch: r.fetch });
  let runs = 0;
  const generate = async () => { runs++; return { content: { text: "generated" }, tokenCount: 900, model: "model-x" }; };
  const entry = await c.getOrGenerate("chapter", "gog-1", generate, { ttlSeconds: 120 });
  expect(runs === 1 && entry.content.text === "generated" && entry.tokenCount === 900, JSON.stringify(entry));
  const ttl = (Date.parse(entry.expiresAt) - Date.parse(entry.createdAt)) / 1000;
  expect(Math.abs(ttl - 120) < 2, `ttlSeconds applied: ${ttl}`);
  expect((await c.get("chapter", "gog-1"))?.content.text === "generated", "stored");
  const again = await c.getOrGenerate("chapter", "gog-1", generate);
  expect(runs === 1 && again.content.text === "generated", "a hit must not generate");
  const asks = r.calls.filter((x) => x.method === "POST" && x.path === "/v1/leases/chapter/gog-1");
  const answers = asks.map((x) => x.status).join();
  expect(answers === "201,200" || answers === "405,405" || answers === "404,404", `lease answers ${answers}`);
  console.log(`     (${answers === "201,200" ? "the service grants leases" : "an older service: fallback to get, generate, put"})`);
  expect(!r.calls.some((x) => x.method === "DELETE"), "nothing was deleted on the way");
  const puts = r.calls.filter((x) => x.method === "PUT");
  expect(puts.length === 1, `one PUT, got ${puts.length}`);
});

await check("getOrGenerate: a throwing generate rethrows and stores nothing", async () => {
  const boom = new Error("model overloaded");
  let caught;
  try {
    await a.getOrGenerate("chapter", "gog-throws", () => { throw boom; });
  } catch (err) {
    caught = err;
  }
  expect(caught === boom, `the generate error itself is rethrown, got ${caught}`);
  expect((await a.get("chapter", "gog-throws")) === null, "nothing stored");
});

// -- abort ----------------------------------------------------------------------------------------

await check("an aborted signal stops a call before it is sent, and one caller of a batch only", async () => {
  const r = recorder();
  const c = createCacheClient({ baseUrl: url, token: env("TOKEN_A"), fetch: r.fetch });
  const gone = new AbortController();
  gone.abort();
  await rejects(c.put("chapter", "never", { content: 1 }, { signal: gone.signal }), (e) => e.code === "aborted" && e.status === 0, "pre-aborted put");
  await rejects(c.get("chapter", "never", { signal: gone.signal }), (e) => e.code === "aborted", "pre-aborted get");
  expect(r.calls.length === 0, "nothing sent");
  const ctl = new AbortController();
  const p1 = c.get("chapter", "secret", { signal: ctl.signal });
  const p2 = c.get("chapter", "secret");
  const p3 = c.get("chapter", "shared-key");
  ctl.abort();
  await rejects(p1, (e) => e.code === "aborted", "the aborted caller");
  expect((await p2)?.content === "A only" && (await p3)?.content === "A's", "the others still get their entries");
});

await check("erase deletes every entry of the user and answers how many", async () => {
  const fresh = await a.erase();
  expect(typeof fresh.deleted === "number", "deleted count");
  await a.put("foundation", "f1", { content: 1 });
  await a.put("foundation", "f2", { content: 2 });
  expect((await a.erase()).deleted === 2, "two erased");
  expect((await a.get("foundation", "f1")) === null, "gone");
});

done();

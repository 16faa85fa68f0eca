// getOrGenerate against the service's lease route (POST/DELETE /v1/leases/{contentType}/{key}).
// One scenario per run: single_flight | expired_holder | max_wait | per_user | generate_throws.
// Environment: CACHESVC_URL; TOKEN_A, TOKEN_B (fresh users). Every client here is a client of
// its own, as separate server processes would have: only the service can make them agree.
import { check, createCacheClient, done, env, expect, recorder, sleep } from "./lib.mjs";

const scenario = process.argv[2];
const url = env("CACHESVC_URL");
const key = `story-${Date.now()}/ch-1`;
const leasePath = `/v1/leases/chapter/${encodeURIComponent(key)}`;

function client(token, extra = {}) {
  const r = recorder();
  return { r, c: createCacheClient({ baseUrl: url, token, fetch: r.fetch, ...extra }) };
}
const leaseAsks = (r) => r.calls.filter((x) => x.method === "POST" && x.path === leasePath);
const statuses = (calls) => calls.map((x) => x.status).join(",");

if (scenario === "single_flight") {
  await check("20 concurrent getOrGenerate of one key: generate runs once, all get its content", async () => {
    let runs = 0;
    const generate = async () => {
      runs++;
      await sleep(500); // a slow model call: the others arrive while it runs
      return { content: { text: `generation #${runs}` }, tokenCount: 1234, model: "model-x" };
    };
    const clients = Array.from({ length: 20 }, () => client(env("TOKEN_A")));
    const entries = await Promise.all(clients.map(({ c }) => c.getOrGenerate("chapter", key, generate, { leaseSeconds: 30 })));
    expect(runs === 1, `generate ran ${runs} times`);
    expect(entries.every((e) => e.key === key && JSON.stringify(e.content) === JSON.stringify({ text: "generation #1" })), JSON.stringify(entries.map((e) => e.content)));
    const asks = clients.flatMap(({ r }) => leaseAsks(r));
    expect(asks.filter((x) => x.status === 201).length === 1, `one grant: ${statuses(asks)}`);
    expect(asks.every((x) => [200, 201, 202].includes(x.status)), `lease answers: ${statuses(asks)}`);
    const puts = clients.flatMap(({ r }) => r.calls.filter((x) => x.method === "PUT"));
    const granted = asks.find((x) => x.status === 201);
    const leaseId = JSON.parse(await granted.responseText).leaseId;
    expect(puts.length === 1 && puts[0].headers["X-Cache-Lease"] === leaseId, `one PUT, carrying the lease id ${leaseId}`);
  });
} else if (scenario === "expired_holder") {
  await check("a holder that never stores: another caller generates once its lease has expired", async () => {
    const holder = client(env("TOKEN_A"));
    let holding;
    const held = new Promise((resolve) => { holding = resolve; });
    void holder.c.getOrGenerate("chapter", key, () => { holding(); return new Promise(() => {}); }, { leaseSeconds: 2 }).catch(() => {});
    await held; // the holder has its grant and is "generating" forever
    const started = Date.now();
    const other = client(env("TOKEN_A"));
    let runs = 0;
    const entry = await other.c.getOrGenerate("chapter", key, async () => { runs++; return { content: "taken over" }; }, { maxWaitMs: 15_000 });
    const took = Date.now() - started;
    expect(runs === 1 && entry.content === "taken over", `generated ${runs} times: ${JSON.stringify(entry.content)}`);
    expect(took >= 1000 && took < 10_000, `took over after ${took} ms (lease 2 s, maxWait 15 s)`);
    const asks = leaseAsks(other.r);
    expect(asks[0].status === 202 && asks.at(-1).status === 201, `waited, then was granted: ${statuses(asks)}`);
    // It long-polls (waitMs > 0 after the first answer) instead of asking again and again.
    expect(asks.length <= 4 && asks.slice(1).every((x) => x.body.waitMs > 0), `asks: ${asks.map((x) => x.body.waitMs)}`);
  });
} else if (scenario === "max_wait") {
  await check("waiting never outlasts maxWaitMs: the waiter generates itself", async () => {
    const holder = client(env("TOKEN_A"));
    let holding;
    const held = new Promise((resolve) => { holding = resolve; });
    void holder.c.getOrGenerate("chapter", key, () => { holding(); return new Promise(() => {}); }, { leaseSeconds: 60 }).catch(() => {});
    await held;
    const started = Date.now();
    const waiter = client(env("TOKEN_A"));
    const entry = await waiter.c.getOrGenerate("chapter", key, async () => ({ content: "impatient" }), { maxWaitMs: 1500 });
    const took = Date.now() - started;
    expect(entry.content === "impatient", JSON.stringify(entry.content));
    expect(took >= 1400 && took < 5000, `gave up waiting after ${took} ms (maxWaitMs 1500)`);
    const asks = leaseAsks(waiter.r);
    expect(asks.every((x) => x.status === 202), `only waits: ${statuses(asks)}`);
    expect(asks.length <= 4 && asks.slice(1).every((x) => x.body.waitMs > 0 && x.body.waitMs <= 1500), `long polls within maxWaitMs: ${asks.map((x) => x.body.waitMs)}`);
  });
} else if (scenario === "per_user") {
  await check("two users with the same key never share a lease", async () => {
    const a = client(env("TOKEN_A"));
    const b = client(env("TOKEN_B"));
    let release;
    const gate = new Promise((resolve) => { release = resolve; });
    let aGranted;
    const aHolds = new Promise((resolve) => { aGranted = resolve; });
    const fromA = a.c.getOrGenerate("chapter", key, async () => { aGranted(); await gate; return { content: "A's chapter" }; });
    await aHolds; // A holds the lease on (A, chapter, key)
    const started = Date.now();
    const fromB = await b.c.getOrGenerate("chapter", key, async () => ({ content: "B's chapter" }), { maxWaitMs: 10_000 });
    expect(fromB.content === "B's chapter", `B got ${JSON.stringify(fromB.content)}`);
    expect(Date.now() - started < 3000, `B was not made to wait for A (${Date.now() - started} ms)`);
    expect(leaseAsks(b.r)[0].status === 201, `B granted at once: ${statuses(leaseAsks(b.r))}`);
    release();
    expect((await fromA).content === "A's chapter", "A stores its own");
    expect((await a.c.get("chapter", key)).content === "A's chapter", "A reads A's");
    expect((await b.c.get("chapter", key)).content === "B's chapter", "B reads B's");
  });
} else if (scenario === "generate_throws") {
  await check("a throwing generate releases the lease at once and rethrows; a waiter takes over", async () => {
    const a = client(env("TOKEN_A"));
    const failure = new Error("model overloaded");
    let aGranted;
    const aHolds = new Promise((resolve) => { aGranted = resolve; });
    const fromA = a.c.getOrGenerate("chapter", key, async () => { aGranted(); await sleep(400); throw failure; }, { leaseSeconds: 30 });
    await aHolds;
    const b = client(env("TOKEN_A"));
    const started = Date.now();
    let runs = 0;
    const fromB = b.c.getOrGenerate("chapter", key, async () => { runs++; return { content: "second try" }; }, { maxWaitMs: 15_000 });
    let caught;
    try {
      await fromA;
    } catch (err) {
      caught = err;
    }
    expect(caught === failure, `A rethrows generate's own error, got ${caught}`);
    const release = a.r.calls.find((x) => x.method === "DELETE" && x.path === leasePath);
    const grant = leaseAsks(a.r).find((x) => x.status === 201);
    expect(release && release.status === 204, `A released its lease: ${release?.status}`);
    const leaseId = grant && JSON.parse(await grant.responseText).leaseId;
    expect(leaseId && release.headers["X-Cache-Lease"] === leaseId, `with its lease id ${leaseId}`);
    const entry = await fromB;
    const took = Date.now() - started;
    expect(runs === 1 && entry.content === "second try", `B generated ${runs} times`);
    expect(took < 5000, `B took over ${took} ms after starting, long before the 30 s lease would expire`);
  });
} else {
  console.log(`unknown scenario ${scenario}`);
  process.exit(2);
}

done();

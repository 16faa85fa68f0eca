// End to end against a live service: CACHESVC_URL, and tokens for two users (A, B), a
// service token, and an expired token for A, all in the environment.
import { CacheClient, CacheError } from "./client.js";

const env = (name: string): string => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

const url = env("CACHESVC_URL");
const a = new CacheClient(url, env("TOKEN_A"));
const b = new CacheClient(url, env("TOKEN_B"));
const serviceForA = new CacheClient(url, env("TOKEN_SERVICE"), env("USER_A"));
const expired = new CacheClient(url, env("TOKEN_A_EXPIRED"));

let passed = 0;
let failed = 0;
async function check(name: string, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
    passed++;
    console.log(`ok   ${name}`);
  } catch (err) {
    failed++;
    console.log(`FAIL ${name}: ${err instanceof Error ? err.message : String(err)}`);
  }
}
function expect(cond: boolean, what: string): void {
  if (!cond) throw new Error(what);
}

await check("put a new entry", async () => {
  const { created, entry } = await a.put("chapter", "story/1", {
    content: { title: "The Beginning", words: 1200 },
    metadata: { prompt: "v3" },
    ttlSeconds: 3600,
    tokenCount: 1500,
    costUsd: 0.021,
    model: "gpt-x",
  });
  expect(created, "expected 201 created");
  expect(entry.tokenCount === 1500 && entry.key === "story/1", "entry fields echoed");
});

await check("get it back", async () => {
  const entry = await a.get("chapter", "story/1");
  expect(entry !== null, "expected a hit");
  expect(JSON.stringify(entry?.content) === JSON.stringify({ title: "The Beginning", words: 1200 }), "same content");
});

await check("replace it", async () => {
  const { created } = await a.put("chapter", "story/1", { content: "second draft" });
  expect(!created, "expected 200 replaced");
});

await check("a miss is null", async () => {
  expect((await a.get("chapter", "never-stored")) === null, "expected a miss");
});

await check("batch lookup in request order", async () => {
  const { results } = await a.lookup([
    { contentType: "chapter", key: "never-stored" },
    { contentType: "chapter", key: "story/1" },
  ]);
  expect(results.length === 2, "two results");
  expect(results[0]?.hit === false && results[1]?.hit === true, "miss then hit");
  expect(results[1]?.entry?.content === "second draft", "hit carries the entry");
});

await check("another user cannot read it", async () => {
  expect((await b.get("chapter", "story/1")) === null, "B must not see A's entry");
  const { results } = await b.lookup([{ contentType: "chapter", key: "story/1" }]);
  expect(results[0]?.hit === false, "B's lookup must miss");
  expect((await b.delete("chapter", "story/1")) === false, "B must not delete A's entry");
});

await check("a service token acts for the user it names", async () => {
  expect((await serviceForA.get("chapter", "story/1"))?.content === "second draft", "service reads A's entry");
});

await check("an expired token gets 401", async () => {
  try {
    await expired.get("chapter", "story/1");
    throw new Error("expected 401");
  } catch (err) {
    expect(err instanceof CacheError && err.status === 401 && err.detail.code === "unauthorized", String(err));
  }
});

await check("bad input is a typed 400", async () => {
  try {
    await a.put("Not-A-Type", "k", { content: 1 });
    throw new Error("expected 400");
  } catch (err) {
    expect(err instanceof CacheError && err.status === 400 && err.detail.field === "contentType", String(err));
  }
});

await check("delete it", async () => {
  expect(await a.delete("chapter", "story/1"), "expected deleted");
  expect((await a.get("chapter", "story/1")) === null, "gone");
});

await check("erase everything of the user", async () => {
  await a.put("foundation", "f1", { content: 1 });
  await a.put("foundation", "f2", { content: 2 });
  const { deleted } = await a.erase();
  expect(deleted === 2, `expected 2 deleted, got ${deleted}`);
});

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);

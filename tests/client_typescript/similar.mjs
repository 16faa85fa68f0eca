// similar(): the semantic search through the client, and another user's identical embedding never found.
import { check, createCacheClient, done, env, expect, rejects } from "./lib.mjs";

const baseUrl = env("CACHESVC_URL");
const dim = Number(env("EMBEDDING_DIM"));
const a = createCacheClient({ baseUrl, token: env("TOKEN_A") });
const b = createCacheClient({ baseUrl, token: env("TOKEN_B") });
const key = `similar-${Date.now()}`;
const vector = Array.from({ length: dim }, (_, i) => (i % 7) + 1);
const near = vector.map((x, i) => (i === 0 ? x + 0.01 : x));

await check("a stored embedding is found by a near one, nearest first, with its distance", async () => {
  await a.put("chapter", key, { content: "a's chapter", embedding: vector });
  const results = await a.similar("chapter", near, { limit: 3 });
  expect(results.length >= 1 && results[0].entry.key === key, `got ${JSON.stringify(results.map((r) => r.entry.key))}`);
  expect(results[0].distance >= 0 && results[0].distance < 0.01, `distance ${results[0].distance}`);
});

await check("another user with the identical embedding finds nothing of a's", async () => {
  const results = await b.similar("chapter", vector, { limit: 20, maxDistance: 2 });
  expect(results.every((r) => r.entry.content !== "a's chapter"), "b saw a's entry");
});

await check("a wrong dimension is a 400 naming embedding", async () => {
  await rejects(a.similar("chapter", [1, 2, 3]), (e) => e.status === 400 && e.field === "embedding", "wrong dimension");
});

done();

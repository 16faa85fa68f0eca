// What @cachesvc/client costs and saves, measured against a live service:
//   1. overhead per `get` against a raw `fetch` of the same GET (one key, a hit), sequential and
//      concurrent, both measured side by side in one run;
//   2. requests saved by coalescing (concurrent gets of distinct keys);
//   3. generations saved by getOrGenerate under a burst of identical misses.
// Environment: CACHESVC_URL, CACHESVC_SERVICE_TOKEN (a service_role token), BENCH_USER (a user
// uuid the token acts for). The service should run without rate limiting
// (CACHESVC_RATE_LIMIT_PER_S=0): bench/run.py starts such a one. Prints a report, then one line
// `RESULT {json}`.
// Options: --n 2000 (sequential calls of each kind), --concurrency 200, --rounds 10,
//          --burst 50 (concurrent getOrGenerate), --generate-ms 200.
import os from "node:os";
import { parseArgs } from "node:util";

import { createCacheClient } from "@cachesvc/client";

const { values: opts } = parseArgs({
  options: {
    n: { type: "string", default: "2000" },
    concurrency: { type: "string", default: "200" },
    rounds: { type: "string", default: "10" },
    burst: { type: "string", default: "50" },
    "generate-ms": { type: "string", default: "200" },
  },
});
const N = Number(opts.n);
const C = Number(opts.concurrency);
const ROUNDS = Number(opts.rounds);
const BURST = Number(opts.burst);
const GENERATE_MS = Number(opts["generate-ms"]);

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}
const baseUrl = env("CACHESVC_URL").replace(/\/+$/, "");
const token = env("CACHESVC_SERVICE_TOKEN");
const user = env("BENCH_USER");
const run = Date.now().toString(36);

/** A fetch that counts the requests it sends. */
function counting() {
  const counter = { requests: 0 };
  counter.fetch = (input, init) => {
    counter.requests++;
    return fetch(input, init);
  };
  return counter;
}
const clientOptions = (extra = {}) => ({ baseUrl, token, user, ...extra });

const ms = (x) => Math.round(x * 1000) / 1000;
function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}
function summary(samples) {
  const s = [...samples].sort((a, b) => a - b);
  return { calls: s.length, medianMs: ms(percentile(s, 50)), p99Ms: ms(percentile(s, 99)) };
}

// -- the hit every get reads ------------------------------------------------------------------

const CT = "chapter";
const KEY = `bench-${run}/hit`;
const seed = createCacheClient(clientOptions());
const text = "lorem ipsum dolor sit amet ".repeat(80); // ~2 KB, a chapter-sized entry
await seed.put(CT, KEY, { content: { text }, tokenCount: 500, costUsd: 0.0075, model: "fake-llm-1" });

const url = `${baseUrl}/v1/cache/${encodeURIComponent(CT)}/${encodeURIComponent(KEY)}`;
const headers = { Accept: "application/json", Authorization: `Bearer ${token}`, "X-Cache-User": user };

/** The raw baseline: what an app would write by hand for the same read. */
async function rawGet() {
  const res = await fetch(url, { headers, cache: "no-store" });
  const body = await res.json();
  if (res.status !== 200 || body.key !== KEY) throw new Error(`raw GET answered ${res.status}`);
  return body;
}
const shared = createCacheClient(clientOptions());
async function clientGet(c = shared) {
  const entry = await c.get(CT, KEY);
  if (entry?.key !== KEY) throw new Error("client get missed");
  return entry;
}

async function timed(fn) {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

/** Like timed, and adds the node process's CPU time (user + system, µs) to cpu[name]. Summed
 * over thousands of interleaved calls this is the client's own cost, whatever the service's. */
const cpu = {};
async function timedCpu(name, fn) {
  const c0 = process.cpuUsage();
  const elapsed = await timed(fn);
  const c = process.cpuUsage(c0);
  cpu[name] = (cpu[name] ?? 0) + c.user + c.system;
  return elapsed;
}
const loadBefore = os.loadavg();

// Warm up both paths (connections, JIT) before measuring.
for (let i = 0; i < 200; i++) {
  await rawGet();
  await clientGet();
}

// -- 1a. sequential: each kind in turn, the order rotated every call ----------------------------

const seq = { raw: [], client: [], clientPerCall: [] };
const kinds = [
  ["raw", () => rawGet()],
  ["client", () => clientGet()],
  // a client made for the call, as a Next.js request handler makes one per request
  ["clientPerCall", () => clientGet(createCacheClient(clientOptions()))],
];
for (let i = 0; i < N; i++) {
  for (let k = 0; k < kinds.length; k++) {
    const [name, fn] = kinds[(i + k) % kinds.length];
    seq[name].push(await timedCpu(name, fn));
  }
}

// -- 1b. concurrent: C calls at once, per-call latency, kinds alternating by round -------------

const conc = { raw: [], clientUncoalesced: [], clientCoalesced: [] };
const concRequests = { raw: 0, clientUncoalesced: 0, clientCoalesced: 0 };
const concWall = { raw: [], clientUncoalesced: [], clientCoalesced: [] };
async function burstOf(name, call, requestsOf) {
  const t0 = performance.now();
  const times = await Promise.all(Array.from({ length: C }, () => timed(call)));
  concWall[name].push(performance.now() - t0);
  conc[name].push(...times);
  concRequests[name] += requestsOf();
}
for (let round = 0; round < ROUNDS; round++) {
  const uncoalesced = counting();
  const cu = createCacheClient(clientOptions({ coalesce: false, fetch: uncoalesced.fetch }));
  const coalesced = counting();
  const cc = createCacheClient(clientOptions({ fetch: coalesced.fetch }));
  const order = [
    ["raw", rawGet, () => C],
    ["clientUncoalesced", () => clientGet(cu), () => uncoalesced.requests],
    ["clientCoalesced", () => clientGet(cc), () => coalesced.requests],
  ];
  for (let k = 0; k < order.length; k++) await burstOf(...order[(round + k) % order.length]);
}

// -- 2. coalescing: C concurrent gets of distinct keys, half hits ------------------------------

const HITS = Math.floor(C / 2);
for (let i = 0; i < HITS; i += 50) {
  await Promise.all(Array.from({ length: Math.min(50, HITS - i) }, (_, j) => seed.put(CT, `bench-${run}/k-${i + j}`, { content: { n: i + j } })));
}
async function distinctGets(coalesce) {
  const counter = counting();
  const c = createCacheClient(clientOptions({ coalesce, fetch: counter.fetch }));
  const t0 = performance.now();
  const results = await Promise.all(Array.from({ length: C }, (_, i) => c.get(CT, `bench-${run}/k-${i}`)));
  const wall = performance.now() - t0;
  results.forEach((entry, i) => {
    if ((i < HITS) !== (entry !== null)) throw new Error(`get ${i}: ${entry === null ? "miss" : "hit"}`);
  });
  return { wall, requests: counter.requests };
}
const coalescing = { coalesced: { wall: [], requests: 0 }, uncoalesced: { wall: [], requests: 0 } };
for (let round = 0; round < 5; round++) {
  for (const [name, flag] of round % 2 ? [["uncoalesced", false], ["coalesced", true]] : [["coalesced", true], ["uncoalesced", false]]) {
    const r = await distinctGets(flag);
    coalescing[name].wall.push(r.wall);
    coalescing[name].requests = r.requests; // the same every round
  }
}

// -- 3. generate once: a burst of identical misses --------------------------------------------

let generations = 0;
async function fakeLlm() {
  generations++;
  await new Promise((resolve) => setTimeout(resolve, GENERATE_MS));
  return { content: { text: "a generated chapter" }, tokenCount: 1800, costUsd: 0.027, model: "fake-llm-1" };
}
async function burstGenerate(key, naive) {
  generations = 0;
  const counter = counting();
  const t0 = performance.now();
  await Promise.all(Array.from({ length: BURST }, async () => {
    // one client per caller, as separate requests (or server processes) would have
    const c = createCacheClient(clientOptions({ fetch: counter.fetch }));
    if (!naive) return c.getOrGenerate(CT, key, fakeLlm, { leaseSeconds: 30 });
    const hit = await c.get(CT, key);
    if (hit) return hit;
    return (await c.put(CT, key, await fakeLlm())).entry;
  }));
  return { generations, requests: counter.requests, wallMs: Math.round(performance.now() - t0) };
}
const generateOnce = {
  getOrGenerate: await burstGenerate(`bench-${run}/burst-lease`, false),
  getThenPut: await burstGenerate(`bench-${run}/burst-naive`, true),
};

// -- report ------------------------------------------------------------------------------------

const round2 = (x) => Math.round(x * 100) / 100;
const median = (xs) => ms([...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]);
const result = {
  node: process.version,
  cpus: os.cpus().length,
  loadAverage: { before: loadBefore.map(round2), after: os.loadavg().map(round2) },
  sequential: Object.fromEntries(Object.entries(seq).map(([k, v]) => [k, { ...summary(v), cpuUsPerCall: Math.round(cpu[k] / v.length) }])),
  concurrent: Object.fromEntries(Object.entries(conc).map(([k, v]) => [k, {
    ...summary(v), requestsPerRound: concRequests[k] / ROUNDS, roundWallMedianMs: median(concWall[k]),
  }])),
  coalescing: Object.fromEntries(Object.entries(coalescing).map(([k, v]) => [k, { requests: v.requests, wallMedianMs: median(v.wall) }])),
  generateOnce,
  parameters: { n: N, concurrency: C, rounds: ROUNDS, hits: HITS, burst: BURST, generateMs: GENERATE_MS },
};

const line = (name, s) => `  ${name.padEnd(34)} median ${s.medianMs.toFixed(3).padStart(8)} ms   p99 ${s.p99Ms.toFixed(3).padStart(8)} ms`;
console.log(`node ${process.version}, ${result.cpus} CPUs, load average ${result.loadAverage.before.join(" ")} before, ${result.loadAverage.after.join(" ")} after`);
console.log(`get of one key (a hit), ${N} sequential calls of each kind, interleaved:`);
for (const [k, s] of Object.entries(result.sequential)) console.log(`${line(k, s)}   node CPU ${s.cpuUsPerCall} µs/call`);
const d = (a, b) => (a - b >= 0 ? "+" : "") + (a - b).toFixed(3);
console.log(`  client overhead: median ${d(result.sequential.client.medianMs, result.sequential.raw.medianMs)} ms, ` +
  `p99 ${d(result.sequential.client.p99Ms, result.sequential.raw.p99Ms)} ms (new client per call: median ` +
  `${d(result.sequential.clientPerCall.medianMs, result.sequential.raw.medianMs)} ms)`);
console.log(`get of one key, ${C} concurrent calls x ${ROUNDS} rounds, per call:`);
for (const [k, s] of Object.entries(result.concurrent)) {
  console.log(`${line(k, s)}   ${s.requestsPerRound} requests/round, round ${s.roundWallMedianMs} ms`);
}
console.log(`${C} concurrent gets of distinct keys (${HITS} hits), median of 5 rounds:`);
for (const [k, s] of Object.entries(result.coalescing)) console.log(`  ${k.padEnd(12)} ${String(s.requests).padStart(4)} requests  ${s.wallMedianMs} ms`);
console.log(`${BURST} concurrent misses of one key, a ${GENERATE_MS} ms generation:`);
for (const [k, s] of Object.entries(generateOnce)) console.log(`  ${k.padEnd(14)} ${String(s.generations).padStart(3)} generations  ${String(s.requests).padStart(4)} requests  ${s.wallMs} ms`);
console.log(`RESULT ${JSON.stringify(result)}`);

// Shared by the node scripts that the pytest modules run against a live service: a tiny check
// runner, and a recording fetch (what the client sent, when, and what came back).
import { CacheError, createCacheClient } from "../../clients/typescript/dist/index.js";

export { CacheError, createCacheClient };

export function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

let passed = 0;
let failed = 0;

/** Run one named check; a thrown error fails it (and is printed), the rest still run. */
export async function check(name, fn) {
  const started = Date.now();
  try {
    await fn();
    passed++;
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (err) {
    failed++;
    const detail = err instanceof CacheError ? ` [${err.status} ${err.code} attempts=${err.attempts}]` : "";
    console.log(`FAIL ${name}: ${err instanceof Error ? err.message : String(err)}${detail}`);
    if (process.env.VERBOSE && err instanceof Error) console.log(err.stack);
  }
}

export function expect(cond, what) {
  if (!cond) throw new Error(what);
}

/** The promise must reject with a CacheError that `test` accepts; returns that error. */
export async function rejects(promise, test, what) {
  let outcome;
  try {
    outcome = await promise;
  } catch (err) {
    if (!(err instanceof CacheError)) throw new Error(`${what}: expected a CacheError, got ${err}`);
    if (!test(err)) {
      throw new Error(`${what}: got ${err.status} ${err.code} (${err.message}) attempts=${err.attempts} retryAfterMs=${err.retryAfterMs} field=${err.field}`);
    }
    return err;
  }
  throw new Error(`${what}: expected a rejection, got ${JSON.stringify(outcome)}`);
}

/** A fetch that records every request: method, path, headers, body, status, start and end. */
export function recorder() {
  const calls = [];
  const fetchImpl = async (url, init) => {
    const u = new URL(url);
    const call = {
      method: init.method ?? "GET",
      path: u.pathname + u.search,
      headers: { ...(init.headers ?? {}) },
      body: typeof init.body === "string" ? JSON.parse(init.body) : undefined,
      start: Date.now(),
      end: undefined,
      status: undefined,
      responseHeaders: undefined,
      responseText: undefined,
      error: undefined,
    };
    calls.push(call);
    try {
      const res = await fetch(url, init);
      call.status = res.status;
      call.responseHeaders = Object.fromEntries(res.headers);
      call.responseText = res.clone().text(); // a promise: await it to read what came back
      return res;
    } catch (err) {
      call.error = String(err);
      throw err;
    } finally {
      call.end = Date.now();
    }
  };
  return { calls, fetch: fetchImpl, reset: () => calls.splice(0) };
}

export function header(call, name) {
  const wanted = name.toLowerCase();
  for (const [k, v] of Object.entries(call.headers)) if (k.toLowerCase() === wanted) return v;
  return undefined;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function done() {
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 ? 0 : 1);
}

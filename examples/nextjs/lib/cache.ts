// The one place that creates cachesvc clients. `server-only` makes `next build` fail if a client
// component ever imports this module (directly or through another module), so the service token
// cannot end up in a browser bundle.
import "server-only";

import { createCacheClient, type CacheClient } from "@cachesvc/client";

function required(name: string): string {
  // Read at request time, never at build time: the built app holds no URL and no token.
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (see examples/nextjs/README.md)`);
  return value;
}

/**
 * A client acting for `userId` with the service token. Make one per request and user: it is
 * cheap (no connection, no timer) and holds that user's coalescing queue and consistency token.
 */
export function cacheFor(userId: string): CacheClient {
  return createCacheClient({
    baseUrl: required("CACHESVC_URL"),
    token: required("CACHESVC_SERVICE_TOKEN"), // a service_role JWT: server side only
    user: userId, // sent as X-Cache-User: the service acts for this user, under their row-level security
    timeoutMs: 5_000,
    retries: 2,
  });
}

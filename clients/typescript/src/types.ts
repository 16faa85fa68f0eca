// The wire types, taken from src/schema.ts (generated from the service's /openapi.json), plus
// the lease answers of getOrGenerate, which the OpenAPI document does not describe yet.
import type { components } from "./schema.js";

export type { components, paths, operations } from "./schema.js";

type Schemas = components["schemas"];

/** A stored generation, as it was before the read that returns it. */
export type CacheEntry = Schemas["CacheEntry"];
/** Body of a PUT: `{ content, metadata?, ttlSeconds?, tokenCount?, costUsd?, model? }`. */
export type PutBody = Schemas["PutEntry"];
/** The same type under the name the OpenAPI document gives it. */
export type PutEntry = PutBody;
export type LookupItem = Schemas["LookupItem"];
export type LookupResult = Schemas["LookupResult"];
export type EraseResponse = Schemas["EraseResponse"];
export type StatsResponse = Schemas["StatsResponse"];
export type ContentTypeStats = Schemas["ContentTypeStats"];
export type FeatureVector = Schemas["FeatureVector"];
export type ErrorDetail = Schemas["ErrorDetail"];
export type ErrorBody = Schemas["ErrorBody"];
export type SimilarRequest = Schemas["SimilarRequest"];
export type SimilarResponse = Schemas["SimilarResponse"];
export type SimilarResult = SimilarResponse["results"][number];

/** `POST /v1/leases/{contentType}/{key}` answers one of these (200, 201, 202). */
export type LeaseAnswer =
  | { status: "hit"; entry: CacheEntry }
  | { status: "granted"; leaseId: string; expiresAt: string }
  | { status: "wait"; expiresAt: string | null };

export { createCacheClient, MAX_BATCH } from "./client.js";
export type {
  CacheClient,
  CacheClientOptions,
  CallOptions,
  FeaturesClient,
  FetchLike,
  GenerateContext,
  GetOrGenerateOptions,
  PutResult,
  TokenSource,
} from "./client.js";
export { CacheError, isCacheError } from "./errors.js";
export type { CacheErrorInit } from "./errors.js";
export type {
  CacheEntry,
  ContentTypeStats,
  ErrorBody,
  ErrorDetail,
  EraseResponse,
  FeatureVector,
  LeaseAnswer,
  LookupItem,
  LookupResult,
  PutBody,
  PutEntry,
  StatsResponse,
  components,
  operations,
  paths,
} from "./types.js";

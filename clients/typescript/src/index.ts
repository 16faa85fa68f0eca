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
  SimilarSearch,
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
  SimilarRequest,
  SimilarResponse,
  SimilarResult,
  StatsResponse,
  components,
  operations,
  paths,
} from "./types.js";

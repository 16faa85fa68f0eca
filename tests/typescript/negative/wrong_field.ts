// Must NOT compile: it reads a field the contract does not have. The suite checks that tsc
// rejects this file, proving that the type check can fail.
import type { components } from "../src/api.js";

export function tokens(entry: components["schemas"]["CacheEntry"]): number {
  return entry.tokenCnt;
}

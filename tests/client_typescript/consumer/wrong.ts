// Must NOT type-check: each line misuses the contract. The suite checks that tsc names them.
import { createCacheClient } from "@cachesvc/client";

const client = createCacheClient({ baseUrl: "http://127.0.0.1:1", token: "t" });
export const a = client.get("chapter", "k").then((entry) => entry?.tokenCnt);
export const b = client.put("chapter", "k", { contnt: "missing content" });
export const c = client.delete("chapter", "k").then((deleted) => deleted.entry);
export const d = createCacheClient({ baseUrl: "http://127.0.0.1:1", token: 42 });

// One chapter of one user: read from cachesvc, or generated once and stored.
import "server-only";

import type { CacheEntry } from "@cachesvc/client";

import { cacheFor } from "./cache";
import { fakeLlm, generationCount } from "./fake-llm";

export const CONTENT_TYPE = "chapter";
const KEY = /^[A-Za-z0-9_-]{1,64}$/;

export interface ChapterText {
  text: string;
  generation: number;
}

export interface Chapter {
  entry: CacheEntry;
  content: ChapterText;
  /** true when this request ran the generator; false when the content came from the cache
   * (stored earlier, or generated meanwhile by a concurrent request that held the lease). */
  generatedHere: boolean;
  /** Generations this server process has run, all keys and users together. */
  generations: number;
}

export function isChapterId(id: string): boolean {
  return KEY.test(id);
}

export async function getChapter(userId: string, id: string): Promise<Chapter> {
  const cache = cacheFor(userId);
  let generatedHere = false;
  const entry = await cache.getOrGenerate(
    CONTENT_TYPE,
    `demo/${id}`,
    async ({ signal }) => {
      generatedHere = true;
      const g = await fakeLlm(`Chapter ${id}`, signal ? { signal } : {});
      const content: ChapterText = { text: g.text, generation: g.generation };
      return { content, tokenCount: g.tokenCount, costUsd: g.costUsd, model: g.model };
    },
    // leaseSeconds above a generation's usual time; waiters give up and generate after maxWaitMs.
    { leaseSeconds: 30, maxWaitMs: 15_000, ttlSeconds: 7 * 86_400 },
  );
  return { entry, content: entry.content as ChapterText, generatedHere, generations: generationCount() };
}

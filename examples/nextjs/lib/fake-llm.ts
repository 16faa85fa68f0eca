// A stand-in for a paid model call: deterministic text for a prompt, after ~200 ms. It counts
// its calls per server process so that the demo (and its test) can show what the cache saved.
import "server-only";

const COUNTER = Symbol.for("cachesvc.example.generations");
// On globalThis, not in a module variable: Next.js may load this module once per route bundle.
const counters = globalThis as typeof globalThis & { [COUNTER]?: number };

/** How many generations this server process has run so far. */
export function generationCount(): number {
  return counters[COUNTER] ?? 0;
}

const WORDS = ["lantern", "harbour", "cipher", "meadow", "comet", "archive", "ember", "violet", "tide", "quartz", "falcon", "orchard"];

/** FNV-1a, to pick words deterministically from the prompt. */
function hash(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

export interface Generation {
  text: string;
  /** This process's generation number: two generations of one key would differ here. */
  generation: number;
  tokenCount: number;
  costUsd: number;
  model: string;
}

export async function fakeLlm(prompt: string, options: { signal?: AbortSignal } = {}): Promise<Generation> {
  const generation = (counters[COUNTER] = generationCount() + 1);
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(resolve, 200);
    options.signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(options.signal?.reason);
    }, { once: true });
  });
  let h = hash(prompt);
  const words: string[] = [];
  for (let i = 0; i < 24; i++) {
    words.push(WORDS[h % WORDS.length]!);
    h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d) >>> 0;
  }
  const text = `${prompt}: ${words.join(" ")}.`;
  return { text, generation, tokenCount: 3 * words.length, costUsd: 0.0005, model: "fake-llm-1" };
}

// A small seeded generator for fuzz tests: a failure names a seed that reproduces it.

/** Uniform numbers in [0, 1) from `seed` (mulberry32). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A whole number in [0, n). */
export const int = (r: () => number, n: number) => Math.floor(r() * n);

// The workload of changelog-survives-kill, shared by the test and its child: fold i marks every block b with
// b % STRIDE == i, so folds are disjoint, each touches every page, and a half-written fold would show.
export const BLOCK = 65536;
export const BLOCKS = 1 << 20; // 64 GiB at 64 KiB: 16 pages
export const STRIDE = 97;
export const DOMAIN = 'vm';
export const TARGET = 'vda';
export const CONSUMER = 'c';
/** Every PASS_EVERY folds the child completes a pass, so generations move on between folds. */
export const PASS_EVERY = 3;

export function foldExtents(i: number): [number, number][] {
  const out: [number, number][] = [];
  for (let b = i; b < BLOCKS; b += STRIDE) out.push([b * BLOCK, BLOCK]);
  return out;
}

export const bitmapName = (i: number) => `k${i}`;

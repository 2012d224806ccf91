// What a scanner reports as unowned (changed blocks no file owned) is carried to the next scan by
// the hypervisor: it is another host's answer, so only byte ranges of the job's own disks are
// kept, clipped to them, merged, and bounded (coarsened into a superset, never dropped).
import { describe, expect, it } from 'vitest';
import { unownedExtents } from '../src/scan/scan.js';

const disks = [{ target: 'vda', sizeBytes: 1 << 20 }, { target: 'vdb', sizeBytes: 4096 }];

describe('unownedExtents', () => {
  it('keeps the ranges of the job\'s disks, clipped and merged, and leaves out anything else', () => {
    const got = unownedExtents({
      unowned: [
        { disk: 'vda', extents: [[8192, 4096], [0, 4096], [4096, 4096], [(1 << 20) - 100, 4096]] },
        { disk: 'vdb', extents: [[-1, 10], [1.5, 10], [0, 0], [100, 'x'], [5000, 10], [0, 512]] },
        { disk: 'vdz', extents: [[0, 4096]] },
        { disk: 'vda', extents: 'all' },
        null,
        'junk',
      ],
    }, disks);
    expect(got).toEqual([
      { disk: 'vda', extents: [[0, 12288], [(1 << 20) - 100, 100]] },
      { disk: 'vdb', extents: [[0, 512]] },
    ]);
    expect(unownedExtents({}, disks)).toEqual([]);
    expect(unownedExtents({ unowned: { vda: [[0, 1]] } }, disks)).toEqual([]);
  });

  it('bounds a huge answer by filling the smallest gaps: every reported byte stays covered', () => {
    const many: [number, number][] = [];
    for (let i = 0; i < 50_000; i++) many.push([i * 16, 4]);
    const [vda] = unownedExtents({ unowned: [{ disk: 'vda', extents: many }] }, disks);
    expect(vda!.extents.length).toBeLessThanOrEqual(20_000);
    expect(vda!.extents[0]![0]).toBe(0);
    const last = vda!.extents.at(-1)!;
    expect(last[0] + last[1]).toBe(49_999 * 16 + 4);
  });
});

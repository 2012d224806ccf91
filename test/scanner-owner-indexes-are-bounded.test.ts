// The scanner's owner-index store: an index comes back only for the state it was kept at, and is
// taken out either way (a job that fails leaves none behind); memory stays within its budget, the
// least recently kept dropped first, and an index larger than the whole budget is not kept.
import { describe, expect, it } from 'vitest';
import type { OwnerIndex } from '../src/fs/index.js';
import { OwnerIndexStore } from '../src/scan/scanner/index.js';

const index = (bytes: number) => ({ bytes }) as unknown as OwnerIndex;
const key = (disk: string) => OwnerIndexStore.key('CN=hv1', 'vm1', disk, 1048576);

describe('the owner-index store', () => {
  it('gives an index back only at the state it was kept at, and removes it either way', () => {
    const store = new OwnerIndexStore(1000);
    const a = index(100);
    store.put(key('vda'), 'log.7', a);
    expect(store.take(key('vda'), 'log.6')).toBeUndefined();
    expect(store.take(key('vda'), 'log.7')).toBeUndefined();
    store.put(key('vda'), 'log.7', a);
    expect(store.take(key('vda'), 'log.7')).toBe(a);
    expect(store.status().kept).toBe(0);
    expect(OwnerIndexStore.key('CN=hv2', 'vm1', 'vda', 1048576)).not.toBe(key('vda'));
  });

  it('stays within its budget, dropping the least recently kept', () => {
    const store = new OwnerIndexStore(1000);
    store.put(key('vda'), 's', index(400));
    store.put(key('vdb'), 's', index(400));
    store.put(key('vdc'), 's', index(400));
    expect(store.status().kept).toBe(2);
    expect(store.take(key('vda'), 's')).toBeUndefined();
    expect(store.take(key('vdc'), 's')).toBeDefined();
    store.put(key('vdd'), 's', index(5000));
    expect(store.take(key('vdd'), 's')).toBeUndefined();
    expect(store.fits(5000)).toBe(false);
    store.put(key('vde'), 's', index(300));
    expect(store.status()).toEqual({ kept: 2, bytes: 700, maxBytes: 1000 });
  });
});

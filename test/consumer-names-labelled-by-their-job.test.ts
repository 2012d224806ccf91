// The change-log consumers virtcbt makes for its own jobs are named by one function each, and the
// listings (`virtcbt status`, `consumer list`) label them by those same names: a sync target's, the
// seed pin that keeps an interrupted seed's history, a scanner's; an admin's own consumer is not.
import { describe, expect, it } from 'vitest';
import { consumerRole } from '../src/cli/commands/tracking.js';
import { scanConsumerName, scannerOfConsumer } from '../src/scan/names.js';
import { isSyncConsumer, seedPinName, seedPinOwner, syncConsumerName } from '../src/sync/target.js';

describe('consumer names of virtcbt\'s own jobs', () => {
  const sync = syncConsumerName('vda', '/srv/replicas/vm1-vda.qcow2');

  it('a sync target\'s consumer and its seed pin are recognised, and the pin names its owner', () => {
    expect(isSyncConsumer(sync)).toBe(true);
    expect(seedPinOwner(seedPinName(sync))).toBe(sync);
    expect(seedPinOwner(sync)).toBeUndefined();
    expect(seedPinOwner('nightly.seed')).toBeUndefined();
    expect(consumerRole(sync)).toMatch(/a sync target: virtcbt sync status/);
    expect(consumerRole(seedPinName(sync))).toMatch(/interrupted seed/);
  });

  it('a scanner\'s consumer names its scanner', () => {
    expect(scannerOfConsumer(scanConsumerName('lab'))).toBe('lab');
    expect(scannerOfConsumer('scan.')).toBeUndefined();
    expect(consumerRole(scanConsumerName('lab'))).toBe(' (scanner lab: virtcbt scan status)');
  });

  it('an admin\'s own consumer gets no label', () => {
    for (const name of ['nightly', 'offsite', 'sync-later', 'scanner']) {
      expect(isSyncConsumer(name)).toBe(false);
      expect(scannerOfConsumer(name)).toBeUndefined();
      expect(consumerRole(name)).toBe('');
    }
  });
});

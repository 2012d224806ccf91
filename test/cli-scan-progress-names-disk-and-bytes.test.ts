// `virtcbt scan` on a terminal: the progress line names the disk being scanned and its mode (from
// the scanner's `disk` event), the files scanned and the bytes sent to clamd and read over NBD (the
// fields the scanner's `progress` events carry); other events leave the line as it is.
import { describe, expect, it } from 'vitest';
import { scanProgressLine } from '../src/cli/commands/scan.js';

describe('the scan progress line', () => {
  it('follows the disk and counts the scanner reports', () => {
    const state = {};
    expect(scanProgressLine({ type: 'accepted', id: 'j', domain: 'vm1', disks: 2 }, state)).toBeUndefined();
    expect(scanProgressLine({ type: 'disk', id: 'j', disk: 'vda', mode: 'incremental', size: 1 }, state)).toBe('vda: incremental scan starting');
    expect(scanProgressLine({ type: 'progress', id: 'j', files: 12, bytesRead: 3 * 1024 * 1024, nbdBytesRead: 5 * 1024 * 1024 }, state))
      .toMatch(/^vda \(incremental\): 12 files scanned, 3(\.0+)? MiB to clamd, 5(\.0+)? MiB read over NBD$/);
    scanProgressLine({ type: 'disk', id: 'j', disk: 'vdb', mode: 'full', size: 1 }, state);
    expect(scanProgressLine({ type: 'progress', id: 'j', files: 1, bytesRead: 0, nbdBytesRead: 4096 }, state)).toMatch(/^vdb \(full\): 1 files scanned, 0 B to clamd/);
    expect(scanProgressLine({ type: 'found', id: 'j', file: {} }, state)).toBeUndefined();
  });

  it('shows zeroes, not NaN or undefined, for fields an older scanner leaves out', () => {
    expect(scanProgressLine({ type: 'progress' }, {})).toMatch(/^: 0 files scanned, 0 B to clamd, 0 B read over NBD$/);
  });
});

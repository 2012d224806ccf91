// `virtcbt scan` on a terminal: the progress line names the disk being scanned and its mode (from
// the scanner's `disk` event), the files scanned and the bytes sent to clamd and read over NBD (the
// fields the scanner's `progress` events carry); other events leave the line as it is. The summary
// names a limit hit with its setting, and clamd's own limits (no setting known) without one.
import { describe, expect, it } from 'vitest';
import { scanProgressLine, scanSummary } from '../src/cli/commands/scan.js';
import type { ScanResult } from '../src/scan/index.js';

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

  it('summary: a limit hit with its setting, clamd\'s own without one, and the scan called incomplete', () => {
    const r = {
      domain: 'vm1', scanner: 's1', consumer: 'scan:s1', full: true, time: '', consistency: 'filesystem', freezeWindowMs: 30, elapsedMs: 1000, notes: [],
      verdict: {
        infected: [], complete: false, notScanned: [],
        skipped: [{ disk: 'vda', partition: 1, path: '/big.iso', reason: 'clamd limit', detail: 'clamd.conf MaxFileSize reached' }],
        limitsHit: [{ limit: 'clamd:MaxFileSize', files: 1 }, { limit: 'maxFiles', value: 10, files: 3 }],
      },
    } as unknown as ScanResult;
    const lines = scanSummary(r);
    expect(lines[0]).toMatch(/INCOMPLETE/);
    expect(lines).toContain('  skipped: vda:/big.iso: clamd limit (clamd.conf MaxFileSize reached)');
    expect(lines).toContain('  limit hit: clamd:MaxFileSize (1 files)');
    expect(lines).toContain('  limit hit: maxFiles 10 (3 files)');
  });
});

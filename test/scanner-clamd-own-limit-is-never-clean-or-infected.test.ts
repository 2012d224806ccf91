// clamd has limits of its own (clamd.conf MaxFileSize, MaxScanSize, ...). With AlertExceedsMax it
// answers a file it stopped short of with "Heuristics.Limits.Exceeded.NAME FOUND": that file was not
// scanned in whole, so the scanner reports it skipped (reason 'clamd limit', the limit counted in
// limitsHit) and the scan incomplete, never infected (no quarantine for a large file) and never
// clean (here the signature sits past clamd's limit), by path from the spool and by INSTREAM alike.
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseReply } from '../src/scan/scanner/index.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { makeFs, MiB } from './support/ext-images.js';
import { tempDir } from './support/nbd-servers.js';
import { EICAR, postScan, scannerWorld, SIGNATURE, startClamd, startScanner, type Clamd, type ScannerWorld } from './support/scanner.js';

useCleanup();

let w: ScannerWorld;
let dir: string;
let image: string;
let limited: Clamd;

beforeAll(async () => {
  const t = tempDir('scanner-clamd-limit');
  onCleanup(() => t.remove());
  dir = t.path;
  w = await scannerWorld(dir);
  limited = await startClamd(join(dir, 'clamd-limited'), { conf: ['MaxFileSize 1M', 'MaxScanSize 1M', 'AlertExceedsMax yes'] });
  const tree = join(dir, 'tree');
  mkdirSync(tree);
  for (let i = 0; i < 8; i++) writeFileSync(join(tree, `small-${i}`), randomBytes(20_000 + i * 1000));
  writeFileSync(join(tree, 'eicar.txt'), `${EICAR}\n`);
  // Over clamd's MaxFileSize, with the signature at its end: clamd never gets to it.
  writeFileSync(join(tree, 'big.bin'), Buffer.concat([randomBytes(2 * MiB), Buffer.from(` ${EICAR}\n`)]));
  image = join(dir, 'fs.img');
  await makeFs(image, 32 * MiB, ['mkfs.ext4'], tree);
}, 120_000);

describe("clamd's own limits", () => {
  it('are read from its replies: Heuristics.Limits.Exceeded.NAME is a limit, any other name a find', () => {
    expect(parseReply('/s/f: Heuristics.Limits.Exceeded.MaxFileSize FOUND\0', '/s/f')).toEqual({ status: 'limit', limit: 'MaxFileSize' });
    expect(parseReply('stream: Heuristics.Limits.Exceeded.MaxScanSize FOUND\0')).toEqual({ status: 'limit', limit: 'MaxScanSize' });
    expect(parseReply('stream: Heuristics.Limits.ExceededX FOUND\0')).toEqual({ status: 'found', signature: 'Heuristics.Limits.ExceededX' });
    expect(parseReply('stream: Heuristics.Phishing.Email FOUND\0')).toEqual({ status: 'found', signature: 'Heuristics.Phishing.Email' });
  });

  for (const handoff of ['spool', 'instream'] as const) {
    it(`make a file skipped and the scan incomplete, neither infected nor clean (${handoff})`, async () => {
      const base = w.config() as { clamd: Record<string, unknown> };
      const scanner = await startScanner(dir, { ...base, clamd: { ...base.clamd, socket: limited.socket, ...(handoff === 'instream' ? { spoolDir: '' } : {}) } }, w.ns, 'nobody');
      const r = await postScan(scanner.url, await w.job(image, `limit-${handoff}`), w.hv);
      const res = r.result!;
      expect(res, r.body).toBeDefined();
      expect(res.infected).toMatchObject([{ disk: 'vda', partition: 0, path: '/eicar.txt', signature: `${SIGNATURE}.UNOFFICIAL` }]);
      expect(res.skipped).toEqual([{ disk: 'vda', partition: 0, path: '/big.bin', reason: 'clamd limit', detail: expect.stringMatching(/MaxFileSize/) }]);
      expect(res.limitsHit).toEqual([{ limit: 'clamd:MaxFileSize', files: 1 }]);
      expect(res.complete).toBe(false);
      expect(res.scanned.files).toBe(9);
      expect(res.clamdHandoff).toMatchObject(handoff === 'spool' ? { spooled: 10, streamed: 0 } : { spooled: 0, streamed: 10 });
    });
  }
});

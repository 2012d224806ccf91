// `npm run bench`: every benchmark, one after another (they must not overlap: each compares
// virtcbt with a reference tool on the same machine in the same minute), or those named:
//   node dist/bench/run.js [NAME ...]     e.g. node dist/bench/run.js nbd-read nbd-block-status
import { execa } from 'execa';
import { loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const BENCHES = ['changelog-fold', 'reconcile-fold', 'nbd-read', 'nbd-block-status', 'fs-usedmap-vs-dumpe2fs', 'tls-export-vs-unix', 'backup-vs-virtnbdbackup', 'sync-vs-dirty-qemuimg-rsync', 'scan-vs-clamdscan'];

const asked = process.argv.slice(2);
const unknown = asked.filter((n) => !BENCHES.includes(n));
if (unknown.length > 0) {
  console.error(`unknown benchmark ${unknown.join(', ')}; known: ${BENCHES.join(', ')}`);
  process.exit(2);
}
const here = dirname(fileURLToPath(import.meta.url));
let failed = 0;
for (const name of asked.length > 0 ? asked : BENCHES) {
  const load = loadavg().map((x) => x.toFixed(2)).join(' ');
  console.log(`\n## ${name} (load average ${load})\n`);
  const r = await execa('node', [join(here, `${name}.js`)], { stdio: 'inherit', reject: false });
  if (r.exitCode !== 0) {
    failed++;
    console.error(`${name} failed (exit ${r.exitCode})`);
  }
}
process.exit(failed > 0 ? 1 : 0);

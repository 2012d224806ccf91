// Tests run against real QEMU, libvirt and NBD servers, in two lanes side by side:
// - "guests": files that boot a TCG guest or use the host's shared libvirtd, hook and test daemon
//   (test/support/libvirt, daemon, qemu). One at a time: they share those, and a 2-core CI
//   machine cannot run two TCG guests without starving both.
// - "host": everything else (own temp directories, own storage daemons, clamd, namespaces). One at
//   a time too, next to the guest lane, so at most one guest and one host-side file run at once.
// A file's lane follows from what it imports (scripts/test-lanes.mjs), so a new test lands in the
// right lane by itself. `npm test` (scripts/test.mjs) runs the two lanes as two vitest processes.
// Long hook timeouts cover a cold guest build.
import { defineConfig } from 'vitest/config';
import { testLanes } from './scripts/test-lanes.mjs';

const report = process.env.VIRTCBT_TEST_REPORT;

const lanes = testLanes(new URL('./', import.meta.url));

export default defineConfig({
  test: {
    testTimeout: 120_000,
    hookTimeout: 300_000,
    pool: 'forks',
    reporters: report ? ['default', 'json'] : ['default'],
    outputFile: report ? { json: report } : undefined,
    projects: [
      {
        extends: true,
        test: {
          name: 'guests',
          include: lanes.guests,
          fileParallelism: false,
          globalSetup: ['test/support/global-setup.ts'],
        },
      },
      {
        extends: true,
        test: {
          name: 'host',
          include: ['test/**/*.test.ts'],
          exclude: lanes.guests,
          fileParallelism: false,
        },
      },
    ],
  },
});

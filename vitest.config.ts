// Tests run against real QEMU, libvirt and NBD servers: one file at a time keeps a 2-core CI
// machine from starving TCG guests, and long hook timeouts cover a cold guest build.
import { defineConfig } from 'vitest/config';

const report = process.env.VIRTCBT_TEST_REPORT;

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 300_000,
    fileParallelism: false,
    pool: 'forks',
    globalSetup: ['test/support/global-setup.ts'],
    reporters: report ? ['default', 'json'] : ['default'],
    outputFile: report ? { json: report } : undefined,
  },
});

// Bundles the three programs (after tsc): the CLI into dist/src/cli/main.js plus lazily loaded
// chunks, so that `virtcbt nbd map` resolves and links a handful of files instead of ~20 ES
// modules (Node's ESM loader spent ~15 ms of a ~110 ms run on resolution alone); virtcbtd and
// virtcbt-scanner into their main.js plus shared chunks in dist/src/bundle/: unbundled, virtcbtd
// spent ~450 of its ~740 ms start resolving, reading and compiling its ~150 modules. The CLI's
// packages stay external; the daemons' are bundled but for the native ones. Everything else
// (benchmarks, the demo) keeps tsc's output.
import { rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outdir = join(root, 'dist', 'src', 'cli');
rmSync(join(outdir, 'chunks'), { recursive: true, force: true });
rmSync(join(root, 'dist', 'src', 'bundle'), { recursive: true, force: true });
const common = {
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  sourcemap: true,
  tsconfig: join(root, 'tsconfig.json'),
  logLevel: 'warning',
};
await build({
  ...common,
  // Packages too (execa alone is ~100 modules), but for the native ones; CommonJS packages in
  // an ES module bundle need a real require for Node's built-ins.
  external: ['better-sqlite3', '@unraid/libvirt'],
  banner: { js: "import { createRequire as __virtcbtCreateRequire } from 'node:module'; const require = __virtcbtCreateRequire(import.meta.url);" },
  entryPoints: { 'daemon/main': join(root, 'src', 'daemon', 'main.ts'), 'scan/scanner/main': join(root, 'src', 'scan', 'scanner', 'main.ts') },
  outdir: join(root, 'dist', 'src'),
  chunkNames: 'bundle/[name]-[hash]',
});
await build({
  ...common,
  // The CLI's packages stay external: each command loads what it needs, when it runs.
  packages: 'external',
  entryPoints: { main: join(root, 'src', 'cli', 'main.ts') },
  outdir,
  chunkNames: 'chunks/[name]-[hash]',
});

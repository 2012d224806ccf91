// Bundles the CLI (after tsc) into dist/src/cli/main.js plus lazily loaded chunks, so that
// `virtcbt nbd map` resolves and links a handful of files instead of ~20 ES modules: Node's
// ESM loader spent ~15 ms of a ~110 ms run on resolution alone. Packages stay external.
// The daemon and everything else keep tsc's output; the CLI process loads only the bundle.
import { rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outdir = join(root, 'dist', 'src', 'cli');
rmSync(join(outdir, 'chunks'), { recursive: true, force: true });
await build({
  entryPoints: { main: join(root, 'src', 'cli', 'main.ts') },
  outdir,
  chunkNames: 'chunks/[name]-[hash]',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  packages: 'external',
  sourcemap: true,
  tsconfig: join(root, 'tsconfig.json'),
  logLevel: 'warning',
});

// Which lane each test file runs in (see vitest.config.ts and scripts/test.mjs). A file that uses
// the rig modules touching shared host state (libvirtd and its guests, the hook, the test daemon,
// TCG guests), directly or through another support module, goes to "guests"; the rest to "host".
import { readdirSync, readFileSync } from 'node:fs';

const SHARED_RIG = ['libvirt', 'daemon', 'qemu'];

/** @param {URL} root the checkout @returns {{ guests: string[], host: string[] }} paths like test/x.test.ts */
export function testLanes(root) {
  const read = (path) => readFileSync(new URL(path, root), 'utf8');
  const supportOf = (text) => [...text.matchAll(/from '\.\/(?:support\/)?([\w-]+)\.js'/g)].map((m) => m[1]);
  const supportImports = new Map(readdirSync(new URL('test/support/', root))
    .filter((f) => f.endsWith('.ts'))
    .map((f) => [f.slice(0, -3), supportOf(read(`test/support/${f}`))]));
  const shared = new Set(SHARED_RIG);
  for (let grew = true; grew;) {
    grew = false;
    for (const [mod, deps] of supportImports) {
      if (!shared.has(mod) && deps.some((d) => shared.has(d))) { shared.add(mod); grew = true; }
    }
  }
  const lanes = { guests: [], host: [] };
  for (const f of readdirSync(new URL('test/', root)).filter((n) => n.endsWith('.test.ts')).sort()) {
    const uses = [...read(`test/${f}`).matchAll(/from '\.\/support\/([\w-]+)\.js'/g)].map((m) => m[1]);
    lanes[uses.some((m) => shared.has(m)) ? 'guests' : 'host'].push(`test/${f}`);
  }
  return lanes;
}

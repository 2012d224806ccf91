// A qemu-storage-daemon an earlier virtcbtd left holding a stopped domain's images (its holder
// file in ENABLED_DIR/.holders names it) keeps the images' write locks: every job the next
// virtcbtd runs on them would fail. At start virtcbtd ends it (SIGTERM: bitmaps written back), and
// only it: a holder file naming another process, or a storage daemon that is not virtcbt's, is
// removed without a signal sent. The private directories of storage daemons a killed virtcbtd
// started go too.
import { execa, type ResultPromise } from 'execa';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { endStaleStorageDaemons, removeStaleStorageDaemonDirs } from '../src/qsd/index.js';
import { pollUntil } from '../src/util/abort.js';

let dir: string;
let holders: string;
const children: ResultPromise[] = [];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'virtcbt-holders-'));
  holders = join(dir, '.holders');
  mkdirSync(holders);
});
afterEach(() => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

async function image(name: string): Promise<string> {
  const p = join(dir, name);
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', p, '16M']);
  return p;
}

/** A storage daemon on `img` with the given node name, as a killed virtcbtd's would be (no parent-death signal). */
async function storageDaemon(img: string, node: string): Promise<number> {
  const qmp = join(dir, `${node}-${children.length}.sock`);
  const c = execa('qemu-storage-daemon', ['--blockdev', `driver=file,node-name=${node}-file,filename=${img}`, '--blockdev', `driver=qcow2,node-name=${node},file=${node}-file`,
    '--chardev', `socket,id=m,path=${qmp},server=on,wait=off`, '--monitor', 'chardev=m'], { reject: false, stdio: 'ignore' });
  children.push(c);
  await pollUntil(() => existsSync(qmp), 'the storage daemon to start', { timeoutMs: 10_000, intervalMs: 20 });
  return c.pid!;
}

const locked = async (img: string) => (await execa('qemu-img', ['info', img], { reject: false })).exitCode !== 0;

it('ends only the storage daemon with virtcbt\'s node names that a holder file names; every holder file goes', async () => {
  const held = await image('held.qcow2');
  const other = await image('other.qcow2');
  const stale = await storageDaemon(held, 'vcbt-vda');
  const notOurs = await storageDaemon(other, 'admin0');
  const sleeper = execa('sleep', ['60'], { reject: false });
  children.push(sleeper);
  writeFileSync(join(holders, 'vm1'), `${stale}\n`);
  writeFileSync(join(holders, 'vm2'), `${notOurs}\n`);
  writeFileSync(join(holders, 'vm3'), `${sleeper.pid}\n`);
  writeFileSync(join(holders, 'vm4'), 'not a pid\n');
  expect(await locked(held)).toBe(true);

  expect(await endStaleStorageDaemons(holders)).toEqual(['vm1']);
  expect(existsSync(`/proc/${stale}`)).toBe(false);
  expect(await locked(held), 'the images are free for the next job').toBe(false);
  expect(existsSync(`/proc/${notOurs}`)).toBe(true);
  expect(await locked(other)).toBe(true);
  expect(existsSync(`/proc/${sleeper.pid}`)).toBe(true);
  expect(readdirSync(holders)).toEqual([]);
});

it('no holder directory: nothing to do', async () => {
  expect(await endStaleStorageDaemons(join(dir, 'missing'))).toEqual([]);
});

it('the private directories of storage daemons a killed virtcbtd started are removed; nothing else in the run directory', async () => {
  const run = join(dir, 'run');
  mkdirSync(join(run, 'qsd-a2JYom'), { recursive: true });
  writeFileSync(join(run, 'qsd-a2JYom', 'qmp.sock'), '');
  mkdirSync(join(run, 'qsd-notes-kept'));
  writeFileSync(join(run, 'img-0a1b2c3d.sock'), '');
  writeFileSync(join(run, 'qsd-Zz9876'), 'a file, not a directory');
  expect(await removeStaleStorageDaemonDirs(run)).toBe(1);
  expect(readdirSync(run).sort()).toEqual(['img-0a1b2c3d.sock', 'qsd-Zz9876', 'qsd-notes-kept']);
});

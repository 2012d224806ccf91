// The repository is untrusted input (it may come back from offsite storage or be edited by hand).
// A valid repository of a stopped two-disk domain is copied, mutated (names, ids, files, backing
// links in manifests and image headers, sizes, truncation, symlinks, stray files, a forged prune
// journal or in-progress marker), and then `list`, `verify`, `restore`, the next `backup` and
// `prune` run on it. A sandbox directory beside the repository holds look-alike targets (qcow2
// images, a secret raw file, a directory of "live" images): afterwards nothing in it may have been
// read (access times), written or removed, no restored byte may come from it, and every command
// either works or names the bad file — never a stack trace.
import { execa, execaSync } from 'execa';
import { createHash, randomBytes } from 'node:crypto';
import { cpSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, truncateSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { backupJson, tempDir } from './support/backup.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, type LibvirtGuest } from './support/libvirt.js';
import { sparseFileContains } from './support/qemu.js';

useCleanup();

const MiB = 1024 * 1024;
/** Seeded, so a failure can be replayed: VIRTCBT_MUTATION_SEED=N. */
const SEED = Number(process.env.VIRTCBT_MUTATION_SEED ?? 20261204);
const RANDOM_ROUNDS = Number(process.env.VIRTCBT_MUTATION_ROUNDS ?? 0);

let daemon: TestDaemon;
let guest: LibvirtGuest;
let base: string;
let pristine: string;
/** Made once (qemu-img converts); each case works on its own copy. */
let pristineSandbox: string;
/** A token that appears only in the sandbox's files: found in a restored disk = read from outside. */
const SECRET = Buffer.from(`VIRTCBT-SANDBOX-SECRET-${randomBytes(8).toString('hex')}`);

/** xorshift32: the mutations' choices, reproducible from SEED. */
function rng(seed: number) {
  let x = seed >>> 0 || 1;
  return (n: number) => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x % n;
  };
}

interface Work {
  root: string;
  repo: string;
  sandbox: string;
  dom: string;
  chain(consumer: string): string;
}

interface Mutation {
  name: string;
  /** Applies the mutation; returns the names (files, ids) a failing command may point at. */
  apply(w: Work, pick: (n: number) => number): string[];
}

function readJson(path: string): any {
  return JSON.parse(readFileSync(path, 'utf8'));
}

function editManifest(w: Work, id: string, edit: (m: any) => void): string[] {
  const consumer = id.replace(/-\d+$/, '');
  const p = join(w.chain(consumer), `${id}.json`);
  const m = readJson(p);
  edit(m);
  writeFileSync(p, JSON.stringify(m, null, 2));
  return [`${id}.json`, id];
}

const MUTATIONS: Mutation[] = [
  { name: 'manifest id escapes the repository', apply: (w) => editManifest(w, 'c1-0002', (m) => { m.id = '../../../sandbox/victim'; }) },
  { name: 'manifest id names another point', apply: (w) => editManifest(w, 'c1-0003', (m) => { m.id = 'c1-0001'; }) },
  { name: 'disk file escapes the chain directory', apply: (w) => editManifest(w, 'c1-0003', (m) => { m.disks[0].file = '../../sandbox/victim.qcow2'; }) },
  { name: 'disk file is an absolute path', apply: (w) => editManifest(w, 'c1-0001', (m) => { m.disks[1].file = join(w.sandbox, 'victim.qcow2'); }) },
  { name: 'backing names a file outside', apply: (w) => editManifest(w, 'c1-0002', (m) => { m.disks[0].backing = '../../sandbox/secret.raw'; }) },
  { name: 'disk file names the next backup\'s image, a symlink to outside', apply: (w) => {
    symlinkSync(join(w.sandbox, 'victim.qcow2'), join(w.chain('c1'), 'c1-0004.vda.qcow2'));
    return [...editManifest(w, 'c1-0003', (m) => { m.disks[0].file = 'c1-0004.vda.qcow2'; }), 'c1-0004.vda.qcow2'];
  } },
  { name: 'image header backing link points outside', apply: (w) => {
    const img = join(w.chain('c1'), 'c1-0003.vda.qcow2');
    run('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-b', join(w.sandbox, 'secret.raw'), '-F', 'raw', img]);
    return ['c1-0003.vda.qcow2', 'c1-0003'];
  } },
  { name: 'chain directory is a symlink to a directory of live images', apply: (w) => {
    rmSync(w.chain('c1'), { recursive: true });
    symlinkSync(join(w.sandbox, 'live'), w.chain('c1'));
    return [w.chain('c1')];
  } },
  { name: 'another consumer\'s chain directory is a symlink', apply: (w) => {
    rmSync(w.chain('c2'), { recursive: true });
    symlinkSync(join(w.sandbox, 'live'), w.chain('c2'));
    return [w.chain('c2')];
  } },
  { name: 'image is a symlink to outside', apply: (w) => {
    const img = join(w.chain('c1'), 'c1-0003.vdb.qcow2');
    unlinkSync(img);
    symlinkSync(join(w.sandbox, 'victim.qcow2'), img);
    return ['c1-0003.vdb.qcow2', 'c1-0003'];
  } },
  { name: 'manifest is a symlink to outside', apply: (w) => {
    const p = join(w.chain('c1'), 'c1-0002.json');
    unlinkSync(p);
    symlinkSync(join(w.sandbox, 'manifest.json'), p);
    return ['c1-0002.json', 'c1-0002'];
  } },
  { name: 'manifest truncated', apply: (w) => {
    const p = join(w.chain('c1'), 'c1-0002.json');
    truncateSync(p, Math.floor(lstatSync(p).size / 2));
    return ['c1-0002.json', 'c1-0002'];
  } },
  { name: 'stray json files', apply: (w) => {
    writeFileSync(join(w.repo, w.dom, 'notes.json'), 'remember to rotate the tapes\n');
    writeFileSync(join(w.chain('c1'), 'notes.json'), '{"not": "a manifest"}\n');
    return ['notes.json'];
  } },
  { name: 'base image truncated', apply: (w) => {
    truncateSync(join(w.chain('c1'), 'c1-0001.vda.qcow2'), 100 * 1024);
    return ['c1-0001.vda.qcow2', 'c1-0001'];
  } },
  { name: 'base image missing', apply: (w) => {
    unlinkSync(join(w.chain('c1'), 'c1-0001.vdb.qcow2'));
    return ['c1-0001.vdb.qcow2', 'c1-0001'];
  } },
  { name: 'disk size is a lie', apply: (w, pick) => editManifest(w, 'c1-0002', (m) => { m.disks[pick(2)].sizeBytes = [1e18, -5, 'big', 512][pick(4)]; }) },
  { name: 'extents are garbage', apply: (w, pick) => editManifest(w, 'c1-0003', (m) => {
    m.disks[pick(2)].extents = [[[-1, 5]], 'x', [[0, 1e17]], [[1, 2, 3]], null][pick(5)];
  }) },
  { name: 'seq repeated', apply: (w) => editManifest(w, 'c1-0003', (m) => { m.seq = 1; }) },
  { name: 'consumer of another chain', apply: (w) => editManifest(w, 'c1-0002', (m) => { m.consumer = 'c2'; }) },
  { name: 'target with a path in it', apply: (w) => editManifest(w, 'c1-0002', (m) => { m.disks[0].target = '../../../sandbox'; }) },
  { name: 'forged prune journal names files outside', apply: (w) => {
    writeFileSync(join(w.chain('c1'), '.prune.json'), JSON.stringify({
      keep: 1, removing: ['../../../sandbox/manifest', 'c1-0001'], into: 'c1-0002', startedAt: new Date().toISOString(),
      disks: [{ target: 'vda', base: '../../sandbox/victim.qcow2', top: 'c1-0002.vda.qcow2', merged: '../../sandbox/merged.qcow2' }],
    }));
    return ['.prune.json'];
  } },
  { name: 'forged in-progress marker names files outside', apply: (w) => {
    writeFileSync(join(w.chain('c1'), '.inprogress.json'), JSON.stringify({
      id: '../../../sandbox/victim', pass: null, generation: 1, files: ['../../sandbox/victim.qcow2', join(w.sandbox, 'secret.raw')],
      pids: [], pid: 1, startedAt: new Date().toISOString(),
    }));
    return ['.inprogress.json'];
  } },
  { name: 'a directory named like an image', apply: (w) => {
    mkdirSync(join(w.chain('c1'), 'c1-0009.vda.qcow2'));
    writeFileSync(join(w.chain('c1'), 'c1-0009.vda.qcow2', 'keep.txt'), 'x');
    return ['c1-0009.vda.qcow2'];
  } },
];

function run(cmd: string, args: string[]): void {
  const r = execaSync(cmd, args, { reject: false });
  if (r.exitCode !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
}

/** Every entry under `dir` (not following links): type and content (this reads them: take it before ageing the access times). */
function contents(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      const st = lstatSync(p);
      if (st.isSymbolicLink()) out.set(p, `link ${readlinkSync(p)}`);
      else if (st.isDirectory()) {
        out.set(p, 'dir');
        walk(p);
      } else out.set(p, `file ${createHash('sha256').update(readFileSync(p)).digest('hex')}`);
    }
  };
  walk(dir);
  return out;
}

/** lstat of known paths only (a listing or a read would move the access times this compares). */
function stats(paths: Iterable<string>): Map<string, string> {
  const out = new Map<string, string>();
  for (const p of paths) {
    const st = lstatSync(p, { throwIfNoEntry: false });
    out.set(p, st ? `mode ${st.mode.toString(8)} size ${st.size} mtime ${st.mtimeMs} atime ${st.atimeMs}` : 'absent');
  }
  return out;
}

function differences(before: Map<string, string>, after: Map<string, string>): string[] {
  return [...new Set([...before.keys(), ...after.keys()])].filter((k) => before.get(k) !== after.get(k))
    .map((k) => `${k}: ${before.get(k) ?? 'absent'} -> ${after.get(k) ?? 'absent'}`);
}

/**
 * Files whose access time is older than their modification time: relatime (the usual mount
 * option) updates the access time on the next read, so a read from outside shows.
 */
function ageAccessTimes(dir: string): void {
  const past = new Date(Date.now() - 3 * 24 * 3600 * 1000);
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      const st = lstatSync(p);
      if (st.isSymbolicLink()) continue;
      if (st.isDirectory()) walk(p);
      utimesSync(p, past, st.mtime);
    }
  };
  walk(dir);
  utimesSync(dir, past, lstatSync(dir).mtime);
}

function makeSandbox(sandbox: string): void {
  mkdirSync(join(sandbox, 'live'), { recursive: true });
  const secret = Buffer.alloc(4 * MiB);
  for (let i = 0; i + SECRET.length <= secret.length; i += SECRET.length) SECRET.copy(secret, i);
  writeFileSync(join(sandbox, 'secret.raw'), secret);
  run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', join(sandbox, 'secret.raw'), join(sandbox, 'victim.qcow2')]);
  for (const n of ['vm1.qcow2', 'vm2.qcow2']) run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', join(sandbox, 'secret.raw'), join(sandbox, 'live', n)]);
  // Targets of the ids and names a forged manifest or journal points at.
  writeFileSync(join(sandbox, 'manifest.json'), readFileSync(join(pristine, guestDir(), 'c1', 'c1-0002.json')));
  writeFileSync(join(sandbox, 'victim.json'), readFileSync(join(pristine, guestDir(), 'c1', 'c1-0002.json')));
  run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', join(sandbox, 'secret.raw'), join(sandbox, 'victim.vda.qcow2')]);
}

function guestDir(): string {
  return encodeURIComponent(guest.name);
}

/** A fresh copy of the pristine repository with a copy of the pristine sandbox beside it. */
function workCopy(): Work {
  const root = tempDir('mut');
  const repo = join(root, 'repo');
  const sandbox = join(root, 'sandbox');
  cpSync(pristine, repo, { recursive: true });
  cpSync(pristineSandbox, sandbox, { recursive: true });
  const dom = guestDir();
  return { root, repo, sandbox, dom, chain: (c) => join(repo, dom, c) };
}

interface Outcome { cmd: string; exitCode: number; out: string }

async function runAll(w: Work): Promise<Outcome[]> {
  const cli = async (cmd: string, args: string[]): Promise<Outcome> => {
    const r = await daemon.cli(args, { reject: false });
    return { cmd, exitCode: r.exitCode, out: `${r.stdout}\n${r.stderr}` };
  };
  // list, verify and restore only read the repository (they take no chain lock): run side by side.
  // The backup and then the prune, which write it, come after them and one after the other.
  const outcomes = await Promise.all([
    cli('list', ['list', '--repo', w.repo, guest.name, '--json']),
    cli('verify', ['verify', '--repo', w.repo, guest.name, '--json']),
    cli('restore newest', ['restore', '--repo', w.repo, guest.name, '--disk', 'vda', '--to', join(w.root, 'out-newest.raw'), '--format', 'raw']),
    cli('restore c1-0003', ['restore', '--repo', w.repo, guest.name, '--disk', 'vda', '--to', join(w.root, 'out-c1-3.raw'), '--format', 'raw', '--at', 'c1-0003']),
  ]);
  outcomes.push(await cli('backup', ['backup', guest.name, '--consumer', 'c1', '--repo', w.repo, '--json']));
  outcomes.push(await cli('prune', ['prune', '--repo', w.repo, guest.name, '--consumer', 'c1', '--keep', '1']));
  return outcomes;
}

async function containsSecret(file: string): Promise<boolean> {
  try {
    return await sparseFileContains(file, SECRET);
  } catch {
    return false;
  }
}

async function check(m: Mutation, apply: (w: Work) => string[]) {
  const w = workCopy();
  const names = apply(w);
  const content = contents(w.sandbox);
  ageAccessTimes(w.sandbox);
  const paths = [w.sandbox, ...content.keys()];
  const before = stats(paths);
  const outcomes = await runAll(w);
  expect(differences(before, stats(paths)), `${m.name}: a file beside the repository was read, written or removed`).toEqual([]);
  expect(differences(content, contents(w.sandbox)), `${m.name}: the sandbox beside the repository changed`).toEqual([]);
  for (const f of readdirSync(w.root).filter((n) => n.startsWith('out-'))) {
    expect(await containsSecret(join(w.root, f)), `${m.name}: ${f} holds bytes of a file outside the repository`).toBe(false);
  }
  for (const o of outcomes) {
    expect(o.out, `${m.name}: ${o.cmd} printed a stack trace`).not.toMatch(/\n\s+at .+\(.*:\d+:\d+\)/);
    if (o.exitCode !== 0) {
      expect(names.some((n) => o.out.includes(n)), `${m.name}: ${o.cmd} failed (exit ${o.exitCode}) without naming ${names.join(' or ')}:\n${o.out.slice(-1500)}`).toBe(true);
    }
  }
  return outcomes;
}

beforeAll(async () => {
  daemon = await startTestDaemon();
  guest = await startLibvirtGuest({ name: 'mut', scratchFormat: 'qcow2', start: false });
  base = tempDir('mutbase');
  pristine = join(base, 'pristine');
  await daemon.cli(['enable', guest.name]);
  await daemon.cli(['consumer', 'add', guest.name, 'c1']);
  await daemon.cli(['consumer', 'add', guest.name, 'c2']);
  // A chain of three for c1 (full, two incrementals with writes between them) and one for c2.
  for (let i = 0; i < 3; i++) {
    if (i > 0) {
      for (const img of [guest.disks.data, guest.disks.scratch]) {
        await execa('qemu-io', ['-f', 'qcow2', '-c', `write -P ${0x40 + i} ${i * MiB} 128k`, img]);
      }
    }
    const r = await backupJson(daemon, [guest.name, '--consumer', 'c1', '--repo', pristine]);
    expect(r.kind).toBe(i === 0 ? 'full' : 'incremental');
  }
  await backupJson(daemon, [guest.name, '--consumer', 'c2', '--repo', pristine]);
  expect(readdirSync(join(pristine, guestDir(), 'c1')).filter((f) => f.endsWith('.json')).sort()).toEqual(['c1-0001.json', 'c1-0002.json', 'c1-0003.json']);
  pristineSandbox = join(base, 'sandbox');
  makeSandbox(pristineSandbox);
  // Each case's backup moves c1 on (and folds the images' bitmaps): every case starts again from
  // here, c1 at c1-0003, so that its backup continues the mutated chain rather than starting a
  // new one because the consumer is ahead of the repository.
  await daemon.stop();
  await execa('cp', ['-a', daemon.stateDir, join(base, 'state')]);
  for (const img of [guest.disks.data, guest.disks.scratch]) await execa('cp', ['-a', img, join(base, basename(img))]);
  await daemon.start();
});

beforeEach(async () => {
  await daemon.stop();
  await execa('rm', ['-rf', daemon.stateDir]);
  await execa('cp', ['-a', join(base, 'state'), daemon.stateDir]);
  for (const img of [guest.disks.data, guest.disks.scratch]) await execa('cp', ['-a', join(base, basename(img)), img]);
  await daemon.start();
});

describe('a mutated repository: nothing outside it is read, written or removed; every command works or names the bad file', () => {
  const unmutated = async () => {
    const outcomes = await check({ name: 'none', apply: () => [] }, () => []);
    expect(outcomes.filter((o) => o.exitCode !== 0).map((o) => `${o.cmd}: ${o.out.slice(-500)}`)).toEqual([]);
    // The backup continued the chain: c1 is where beforeAll left it, whatever ran before this case.
    const backup = JSON.parse(outcomes.find((o) => o.cmd === 'backup')!.out.trim().split('\n').filter((l) => l.startsWith('{')).pop()!);
    expect(backup).toMatchObject({ type: 'result', kind: 'incremental', parent: 'c1-0003' });
  };
  it('the unmutated copy: every command works', unmutated);

  for (const [i, m] of MUTATIONS.entries()) {
    it(m.name, async () => {
      await check(m, (w) => m.apply(w, rng(SEED + i)));
    });
  }

  for (let round = 0; round < RANDOM_ROUNDS; round++) {
    it(`two mutations at once, round ${round} (seed ${SEED})`, async () => {
      const pick = rng(SEED * 31 + round);
      const a = MUTATIONS[pick(MUTATIONS.length)]!;
      let b = MUTATIONS[pick(MUTATIONS.length)]!;
      if (b === a) b = MUTATIONS[(MUTATIONS.indexOf(a) + 1) % MUTATIONS.length]!;
      await check({ name: `${a.name} + ${b.name}`, apply: () => [] }, (w) => {
        const names: string[] = [];
        for (const m of [a, b]) {
          try {
            names.push(...m.apply(w, pick));
          } catch {
            // The first mutation removed what the second edits (e.g. a truncated manifest): it stands alone.
          }
        }
        return names;
      });
    });
  }

  it('the unmutated copy again, after the mutated ones: every command works and the backup continues the chain', unmutated);
});

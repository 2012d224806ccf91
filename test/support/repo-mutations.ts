// Random mutations of a handmade repository (names, ids, files, backing links in manifests and in
// image headers, sizes, extents, truncation, links, stray files), for the files that check that
// no command reaches outside a mutated repository.
import { execa } from 'execa';
import { readFileSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { expect } from 'vitest';
import type { SandboxedRepo } from './handmade-repo.js';
import { tempDir } from './files.js';

const OUT = '../../../sandbox';
const NAMES = [`${OUT}/victim`, '..', '.', '', '/etc/passwd', 'nightly-0001', 'nightly-0003', 'nightly-0002/../x', 'weekly-0001', 'nightly-1', 'nightly-00002', 'nightly-0009'];
const FILES = [`${OUT}/live.qcow2`, `${OUT}/nightly-0001.vda.qcow2`, '/tmp', 'nightly-0001.vda.qcow2', 'nightly-0003.vda.qcow2', 'nightly-0002.vda.merged.qcow2', 'nightly-0002.vdb.qcow2', 'x.qcow2', '', null, 7];
const NUMBERS = [-1, 0, 1.5, 2 ** 60, '12', null, 1 << 40, Number.MAX_SAFE_INTEGER];

/** What a round works on: its own copy of the repository and the sandbox beside it. */
export type RoundRepo = Pick<SandboxedRepo, 'root' | 'dirs' | 'sandbox'>;

type Mutation = (r: RoundRepo, pick: <T>(xs: T[]) => T) => Promise<string>;

/**
 * A copy (cp -a, reflinked where the filesystem can) of `pristine`'s directory, repository and
 * sandbox, for one round: made in a moment, where building one runs qemu-img and a checksum per
 * image. Manifests and image headers name files relative to their chain directory, so the copy is
 * the same repository.
 */
export async function roundCopy(pristine: SandboxedRepo): Promise<RoundRepo> {
  const from = dirname(pristine.sandbox);
  const to = tempDir('mut-round');
  await execa('cp', ['-a', '--reflink=auto', `${from}/.`, to]);
  const moved = (p: string) => join(to, relative(from, p));
  return { root: moved(pristine.root), dirs: { nightly: moved(pristine.dirs.nightly!) }, sandbox: moved(pristine.sandbox) };
}

function editManifest(r: RoundRepo, seq: number, change: (m: any) => void): string {
  const file = `nightly-000${seq}.json`;
  const p = join(r.dirs.nightly!, file);
  let m: any;
  try {
    m = JSON.parse(readFileSync(p, 'utf8'));
  } catch (err) {
    // An earlier mutation of this round truncated it: no JSON left to edit, skipped as below.
    if (err instanceof SyntaxError) return `${file} (skipped: no longer JSON)`;
    throw err;
  }
  try {
    change(m);
  } catch (err) {
    // An earlier mutation of this round left nothing to edit (disks became a string): this one is skipped.
    if (!(err instanceof TypeError)) throw err;
  }
  writeFileSync(p, JSON.stringify(m));
  return file;
}

const MUTATIONS: Record<string, Mutation> = {
  id: async (r, pick) => editManifest(r, pick([1, 2, 3]), (m) => { m.id = pick(NAMES); }),
  consumer: async (r, pick) => editManifest(r, pick([1, 2, 3]), (m) => { m.consumer = pick(NAMES); }),
  parent: async (r, pick) => editManifest(r, pick([1, 2, 3]), (m) => { m.parent = pick(NAMES); }),
  file: async (r, pick) => editManifest(r, pick([1, 2, 3]), (m) => { m.disks[0].file = pick(FILES); }),
  backing: async (r, pick) => editManifest(r, pick([1, 2, 3]), (m) => { m.disks[0].backing = pick(FILES); }),
  target: async (r, pick) => editManifest(r, pick([1, 2, 3]), (m) => { m.disks[0].target = pick(['../vda', 'vda/x', '', 'vdb', 'v'.repeat(80)]); }),
  seq: async (r, pick) => editManifest(r, pick([1, 2, 3]), (m) => { m.seq = pick(NUMBERS); }),
  size: async (r, pick) => editManifest(r, pick([1, 2, 3]), (m) => { m.disks[0].sizeBytes = pick(NUMBERS); }),
  extents: async (r, pick) => editManifest(r, pick([1, 2, 3]), (m) => { m.disks[0].extents = pick([[[-1, 5]], [[0, 2 ** 60]], [[5, 1], [0, 1]], 'x', [[0]], [[1.5, 2]]]); }),
  disks: async (r, pick) => editManifest(r, pick([1, 2, 3]), (m) => { m.disks = pick([[], null, [m.disks[0], m.disks[0]], 'vda']); }),
  truncate: async (r, pick) => {
    const file = `nightly-000${pick([1, 2, 3])}.json`;
    const p = join(r.dirs.nightly!, file);
    truncateSync(p, Math.floor(readFileSync(p).length * pick([0, 0.3, 0.9])));
    return file;
  },
  notJson: async (r, pick) => {
    const file = pick(['notes.json', 'nightly.json', 'nightly-0002.json.bak', '.nightly-0004.json']);
    writeFileSync(join(r.dirs.nightly!, file), pick(['{', 'null', '[]', '"x"']));
    return file;
  },
  headerBacking: async (r, pick) => {
    const file = `nightly-000${pick([2, 3])}.vda.qcow2`;
    const target = join(r.dirs.nightly!, file);
    // An earlier mutation of this round left no qcow2 header to edit (truncated, replaced): skipped, as
    // editManifest skips a manifest with nothing left to edit.
    const info = await execa('qemu-img', ['info', '-U', '--output=json', target], { reject: false });
    if (info.exitCode !== 0 || JSON.parse(info.stdout).format !== 'qcow2') return `${file} (skipped: no longer a qcow2)`;
    await execa('qemu-img', ['rebase', '-u', '-F', 'qcow2', '-b', pick([`${OUT}/live.qcow2`, join(r.sandbox, 'live.qcow2')]), target]);
    return file;
  },
  imageTruncate: async (r, pick) => {
    const file = `nightly-000${pick([1, 2, 3])}.vda.qcow2`;
    truncateSync(join(r.dirs.nightly!, file), pick([0, 100, 70_000]));
    return file;
  },
  imageLink: async (r, pick) => {
    const file = pick(['nightly-0001.vda.qcow2', 'nightly-0004.vda.qcow2', 'nightly-0003.vda.merged.qcow2']);
    const p = join(r.dirs.nightly!, file);
    await execa('rm', ['-f', p]);
    symlinkSync(join(r.sandbox, 'live.qcow2'), p);
    return file;
  },
  journal: async (r, pick) => {
    writeFileSync(join(r.dirs.nightly!, '.prune.json'), JSON.stringify({
      keep: pick([1, 0, 'x']), removing: [pick(NAMES)], into: pick(NAMES),
      disks: [{ target: 'vda', base: pick(FILES), top: pick(FILES), merged: pick(FILES) }], startedAt: '',
    }));
    return '.prune.json';
  },
  marker: async (r, pick) => {
    writeFileSync(join(r.dirs.nightly!, '.inprogress.json'), JSON.stringify({ id: pick(NAMES), pass: null, generation: 1, files: [pick(FILES)], pids: [pick([1, process.pid, -5])], pid: 1, startedAt: '' }));
    return '.inprogress.json';
  },
};

/** Applies one or two random mutations; returns what was done, for the failure message (which names the seed, to replay it). */
export async function mutate(r: RoundRepo, random: () => number, label: string): Promise<{ kind: string; file: string }[]> {
  const pick = <T>(xs: T[]): T => xs[Math.floor(random() * xs.length)]!;
  const kinds = Object.keys(MUTATIONS);
  const applied: { kind: string; file: string }[] = [];
  for (let n = 1 + Math.floor(random() * 2); n > 0; n--) {
    const kind = pick(kinds);
    try {
      applied.push({ kind, file: await MUTATIONS[kind]!(r, pick) });
    } catch (err) {
      throw new Error(`${label}: mutation ${kind} after ${JSON.stringify(applied)} failed (replay with VIRTCBT_MUTATION_SEED): ${(err as Error).message}`);
    }
  }
  return applied;
}

/** No stack trace, no JS error class; a failure names what it could not use. */
export function expectSaneOutcome(run: { exitCode?: number; stdout: string; stderr: string; command: string }, what: string): void {
  const text = run.stdout + run.stderr;
  expect(text, `${what}: ${run.command}`).not.toMatch(/\n\s+at .+\(.+:\d+:\d+\)|TypeError|RangeError|ReferenceError/);
  if (run.exitCode !== 0) expect(text, `${what}: ${run.command}`).toMatch(/nightly|prune|inprogress|image|manifest/);
}

/** The seed of this run's mutations (VIRTCBT_MUTATION_SEED replays one). */
export const mutationSeed = Number(process.env.VIRTCBT_MUTATION_SEED ?? Date.now() % 100_000);

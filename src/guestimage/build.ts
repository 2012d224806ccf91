// Builds the test guest (kernel, initramfs, base disks) once per recipe and caches it outside git.
// A build lands in a temp directory and is renamed into place, so a killed or concurrent build
// never leaves a half-made cache behind; a lock file keeps two builders from doing the work twice.
import { execa } from 'execa';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pollUntil } from '../util/abort.js';
import { VirtcbtError } from '../util/errors.js';
import { buildBaseDisks } from './disks.js';
import { buildInitramfs, QEMU_GA } from './initramfs.js';
import { downloadKernelDeb, extractKernel, BASE_MODULES, moduleLoadOrder, resolveKernelPackage, XFS_MODULES } from './kernel.js';

/** Bump when anything in the recipe changes (init script, disk layout, module list): the cache key changes with it. */
export const RECIPE_VERSION = 7;

/** Kernel command line for the test guest: output on the first serial port only. */
export const GUEST_APPEND = 'console=ttyS0 quiet';

export interface GuestImages {
  /** Cache directory holding everything below. */
  dir: string;
  key: string;
  kernel: string;
  initrd: string;
  /** ext4, label virtcbt-data, a few known files (see DATA_FILES). Copy before use. */
  dataExt4: string;
  /** xfs, label virtcbt-xfs, empty. Copy before use. */
  dataXfs: string;
  /** Zeroed sparse raw disk. Copy before use. */
  scratchRaw: string;
  kernelRelease: string;
  kernelPackage: string;
}

interface Manifest {
  recipe: number;
  key: string;
  kernelPackage: string;
  kernelVersion: string;
  kernelRelease: string;
  qemuGaVersion: string;
  builtAt: string;
}

/** The repository root (the directory with virtcbt's package.json), from src/ or dist/src/. */
export function repoRoot(): string {
  let d = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(d, 'package.json')) && existsSync(join(d, 'src'))) return d;
    const up = dirname(d);
    if (up === d) throw new VirtcbtError('cannot find the virtcbt repository root above ' + fileURLToPath(import.meta.url));
    d = up;
  }
}

/** Where cached guests live: VIRTCBT_CACHE_DIR/guest, else <repo>/.cache/guest. */
export function defaultGuestCacheDir(): string {
  const base = process.env.VIRTCBT_CACHE_DIR || join(repoRoot(), '.cache');
  return join(base, 'guest');
}

/**
 * Returns the cached test guest for the current kernel package and qemu-ga, building it first
 * if needed. `cacheDir` holds one subdirectory per recipe key.
 */
export async function buildGuestImages(cacheDir: string = defaultGuestCacheDir()): Promise<GuestImages> {
  const kpkg = await resolveKernelPackage();
  const ga = await execa('dpkg-query', ['-W', '-f=${Version}', 'qemu-guest-agent'], { reject: false });
  const gaVersion = ga.exitCode === 0 ? ga.stdout.trim() : 'unknown';
  // xfs_io is copied from the host too: a new xfsprogs makes a new guest.
  const xfs = await execa('dpkg-query', ['-W', '-f=${Version}', 'xfsprogs'], { reject: false });
  const xfsVersion = xfs.exitCode === 0 ? xfs.stdout.trim() : 'unknown';
  const key = createHash('sha256')
    .update(JSON.stringify([RECIPE_VERSION, kpkg.name, kpkg.version, gaVersion, xfsVersion]))
    .digest('hex')
    .slice(0, 16);
  const dir = join(cacheDir, key);
  await mkdir(cacheDir, { recursive: true });

  const cached = await readCached(dir);
  if (cached) return cached;

  const release = await acquireLock(join(cacheDir, `.lock-${key}`), dir);
  try {
    // Another process may have finished while we waited for the lock.
    const again = await readCached(dir);
    if (again) return again;
    await removeAbandonedBuilds(cacheDir);
    // The pid in the name lets a later run tell an abandoned build from one in progress.
    const work = await mkdtemp(join(cacheDir, `${BUILD_PREFIX}${key}-${process.pid}-`));
    try {
      const out = join(work, 'out');
      await mkdir(out);
      const deb = await downloadKernelDeb(kpkg, work);
      const k = await extractKernel(deb, join(work, 'kernel'));
      await copyFile(k.vmlinuz, join(out, 'vmlinuz'));
      const baseModules = await moduleLoadOrder(k.modulesDir, BASE_MODULES);
      const xfsModules = (await moduleLoadOrder(k.modulesDir, XFS_MODULES)).filter((m) => !baseModules.includes(m));
      await buildInitramfs({
        stage: join(work, 'initramfs'),
        output: join(out, 'initrd.gz'),
        release: k.release,
        modulesDir: k.modulesDir,
        baseModules,
        xfsModules,
      });
      await buildBaseDisks(out, work);
      const manifest: Manifest = {
        recipe: RECIPE_VERSION,
        key,
        kernelPackage: kpkg.name,
        kernelVersion: kpkg.version,
        kernelRelease: k.release,
        qemuGaVersion: gaVersion,
        builtAt: new Date().toISOString(),
      };
      // The manifest is written last: a directory with a manifest is complete.
      await writeFile(join(out, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
      try {
        await rename(out, dir);
      } catch (err) {
        // Someone without the lock (e.g. a stale lock was broken) got there first: theirs is complete too.
        if (!(await readCached(dir))) throw err;
      }
    } finally {
      await rm(work, { recursive: true, force: true });
    }
    const built = await readCached(dir);
    if (!built) throw new VirtcbtError(`guest image build finished but ${dir} is incomplete`);
    return built;
  } catch (cause) {
    throw cause instanceof VirtcbtError
      ? cause
      : new VirtcbtError(`building the test guest in ${dir} failed: ${(cause as Error).message}`, {
          cause,
          hint: `Check that ${QEMU_GA}, busybox-static, cpio, kmod, e2fsprogs, xfsprogs and qemu-utils are installed (bash scripts/setup.sh)`,
        });
  } finally {
    await release();
  }
}

const BUILD_PREFIX = '.build-';

/** Deletes temp build directories left by builders that were killed (their pid is gone). */
async function removeAbandonedBuilds(cacheDir: string): Promise<void> {
  for (const name of await readdir(cacheDir).catch(() => [] as string[])) {
    const m = /^\.build-[0-9a-f]+-(\d+)-/.exec(name);
    if (m && !pidAlive(Number(m[1]))) await rm(join(cacheDir, name), { recursive: true, force: true });
  }
}

async function readCached(dir: string): Promise<GuestImages | undefined> {
  let m: Manifest;
  try {
    m = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as Manifest;
  } catch {
    return undefined;
  }
  const images: GuestImages = {
    dir,
    key: m.key,
    kernel: join(dir, 'vmlinuz'),
    initrd: join(dir, 'initrd.gz'),
    dataExt4: join(dir, 'data-ext4.qcow2'),
    dataXfs: join(dir, 'data-xfs.qcow2'),
    scratchRaw: join(dir, 'scratch.raw'),
    kernelRelease: m.kernelRelease,
    kernelPackage: `${m.kernelPackage}=${m.kernelVersion}`,
  };
  for (const f of [images.kernel, images.initrd, images.dataExt4, images.dataXfs, images.scratchRaw]) {
    if (!existsSync(f)) return undefined;
  }
  return images;
}

/**
 * Takes the build lock (a file holding the owner's pid). While a live process holds it we wait,
 * returning early if the finished cache appears; a lock whose process is gone is broken.
 */
async function acquireLock(path: string, doneDir: string): Promise<() => Promise<void>> {
  await pollUntil(
    async () => {
      try {
        const fh = await open(path, 'wx');
        await fh.writeFile(String(process.pid));
        await fh.close();
        return true;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      if (existsSync(join(doneDir, 'manifest.json'))) return true;
      const owner = Number(await readFile(path, 'utf8').catch(() => ''));
      // An empty lock may be one being written this instant: only break it once it is old.
      const stale = owner ? !pidAlive(owner) : Date.now() - ((await stat(path).catch(() => undefined))?.mtimeMs ?? 0) > 10_000;
      if (stale) await rm(path, { force: true });
      return false;
    },
    `waiting for another process to finish building the test guest (lock ${path})`,
    { timeoutMs: 15 * 60_000, intervalMs: 250 },
  );
  // If we returned because the cache appeared we never took the lock; removing it must not hurt
  // the holder, so only remove a lock that names us.
  return async () => {
    const owner = Number(await readFile(path, 'utf8').catch(() => ''));
    if (owner === process.pid) await rm(path, { force: true });
  };
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

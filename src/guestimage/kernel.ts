// Fetches the Debian cloud kernel as a .deb (never installed on the host) and works out which
// modules the test guest must insmod, in dependency order, from the package's own modules.dep.
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { copyFile, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { VirtcbtError } from '../util/errors.js';

/** The meta-package that always points at the current cloud kernel. */
export const KERNEL_META_PACKAGE = 'linux-image-cloud-amd64';

/**
 * Modules every guest boot needs. The cloud kernel has ext4 built in but not virtio.
 * virtio_pci pulls in virtio_ring, virtio and the pci_legacy/modern helpers through modules.dep.
 */
export const BASE_MODULES = ['virtio_pci', 'virtio_blk', 'virtio_console'];
/** Loaded only when an xfs disk is attached: relocating xfs.ko costs seconds under TCG. */
export const XFS_MODULES = ['xfs'];

export interface KernelPackage {
  /** e.g. linux-image-6.1.0-56-cloud-amd64 */
  name: string;
  /** Debian version of that package, e.g. 6.1.192-2 */
  version: string;
}

/** Resolves the versioned kernel package the meta-package depends on, without downloading. */
export async function resolveKernelPackage(): Promise<KernelPackage> {
  const dep = await execa('apt-cache', ['depends', KERNEL_META_PACKAGE], { reject: false });
  const name = /Depends:\s*(linux-image-\S+)/.exec(dep.stdout)?.[1];
  if (dep.exitCode !== 0 || !name) {
    throw new VirtcbtError(`cannot resolve the kernel package behind ${KERNEL_META_PACKAGE}: ${dep.stderr || dep.stdout}`, {
      hint: 'Run `apt-get update` so apt knows the package, then retry',
    });
  }
  const show = await execa('apt-cache', ['show', '--no-all-versions', name], { reject: false });
  const version = /^Version:\s*(\S+)/m.exec(show.stdout)?.[1];
  if (!version) throw new VirtcbtError(`apt-cache show ${name} gave no version`, { hint: 'Run `apt-get update`, then retry' });
  return { name, version };
}

/** Downloads the .deb into `dir` (apt-get update only if the first try fails); returns its path. */
export async function downloadKernelDeb(pkg: KernelPackage, dir: string): Promise<string> {
  const find = async () => (await readdir(dir)).find((f) => f.startsWith(`${pkg.name}_`) && f.endsWith('.deb'));
  const tryDownload = () => execa('apt-get', ['download', `${pkg.name}=${pkg.version}`], { cwd: dir, reject: false });
  let r = await tryDownload();
  if (r.exitCode !== 0) {
    await execa('apt-get', ['update', '-q'], { reject: false });
    r = await tryDownload();
  }
  const got = await find();
  if (r.exitCode === 0 && got) return join(dir, got);
  // Offline machine: apt may still hold the package from an earlier install.
  const archived = `/var/cache/apt/archives/${pkg.name}_${pkg.version.replace(/:/g, '%3a')}_amd64.deb`;
  if (existsSync(archived)) {
    const dst = join(dir, `${pkg.name}.deb`);
    await copyFile(archived, dst);
    return dst;
  }
  throw new VirtcbtError(`apt-get download ${pkg.name}=${pkg.version} failed: ${r.stderr.trim()}`, {
    hint: 'Check network access to the Debian mirror (the test guest kernel comes from it)',
  });
}

export interface ExtractedKernel {
  /** Kernel release, the directory name under lib/modules. */
  release: string;
  vmlinuz: string;
  /** lib/modules/RELEASE inside the extracted package. */
  modulesDir: string;
}

/** dpkg -x the package into `root` and regenerate modules.dep there with depmod -b. */
export async function extractKernel(deb: string, root: string): Promise<ExtractedKernel> {
  await execa('dpkg', ['-x', deb, root]);
  const modulesBase = existsSync(join(root, 'lib/modules')) ? join(root, 'lib/modules') : join(root, 'usr/lib/modules');
  const releases = await readdir(modulesBase);
  if (releases.length !== 1) throw new VirtcbtError(`expected one kernel release in ${deb}, found ${releases.join(', ') || 'none'}`);
  const release = releases[0];
  const boot = await readdir(join(root, 'boot'));
  const vmlinuz = boot.find((f) => f.startsWith('vmlinuz-'));
  if (!vmlinuz) throw new VirtcbtError(`no vmlinuz in ${deb}`);
  // depmod -b wants the root that contains lib/modules; usr-merged packages keep it under usr/.
  const depmodRoot = modulesBase === join(root, 'lib/modules') ? root : join(root, 'usr');
  await execa('depmod', ['-b', depmodRoot, release]);
  return { release, vmlinuz: join(root, 'boot', vmlinuz), modulesDir: join(modulesBase, release) };
}

/**
 * Module files (paths relative to lib/modules/RELEASE) to insmod, dependencies first.
 * Modules built into the kernel are skipped; a wanted module that is neither is an error.
 */
export async function moduleLoadOrder(modulesDir: string, wanted: readonly string[]): Promise<string[]> {
  const depText = await readFile(join(modulesDir, 'modules.dep'), 'utf8');
  const builtinText = await readFile(join(modulesDir, 'modules.builtin'), 'utf8').catch(() => '');
  const deps = new Map<string, string[]>();
  const byName = new Map<string, string>();
  for (const line of depText.split('\n')) {
    const m = /^([^:]+):\s*(.*)$/.exec(line);
    if (!m) continue;
    deps.set(m[1], m[2].split(/\s+/).filter(Boolean));
    byName.set(moduleName(m[1]), m[1]);
  }
  const builtin = new Set(builtinText.split('\n').filter(Boolean).map(moduleName));
  const order: string[] = [];
  const seen = new Set<string>();
  const visit = (file: string) => {
    if (seen.has(file)) return;
    seen.add(file);
    // modules.dep lists the full transitive closure; visiting each one depth-first puts a
    // module after everything it needs (virtio_ring before virtio before virtio_pci).
    for (const d of deps.get(file) ?? []) visit(d);
    order.push(file);
  };
  for (const name of wanted) {
    const file = byName.get(name);
    if (file) visit(file);
    else if (!builtin.has(name)) throw new VirtcbtError(`kernel module ${name} is neither a module nor built in (${modulesDir})`);
  }
  return order;
}

/** "kernel/drivers/virtio/virtio_pci.ko" → "virtio_pci" (dashes and underscores are the same to the kernel). */
function moduleName(path: string): string {
  const base = path.split('/').pop() ?? path;
  return base.replace(/\.ko(\.(xz|gz|zst))?$/, '').replace(/-/g, '_');
}

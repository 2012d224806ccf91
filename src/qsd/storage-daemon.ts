// qemu-storage-daemon for stopped domains: opens a domain's qcow2 images with the same block
// layer QEMU uses, so folds, backups and scans run through the same QMP and NBD code as for a
// running VM. It must quit through QMP: that is what writes persistent bitmaps back cleanly.
import { execa } from 'execa';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { QmpClient } from '../qmp/index.js';
import { pollUntil } from '../util/abort.js';
import { VirtcbtError } from '../util/errors.js';

export interface QsdImage {
  /** Names the node: the format node is called `NODE_PREFIX + target`. */
  target: string;
  image: string;
  format?: 'qcow2' | 'raw';
  readOnly?: boolean;
}

export interface QsdSession {
  qmp: QmpClient;
  /** Socket path for `nbd-server-start` in this daemon. */
  nbdSocket: string;
  nodes: { target: string; node: string }[];
  pid: number;
}

export const NODE_PREFIX = 'vcbt-';

/** Longest a storage daemon may take to write its bitmaps back and exit. */
const QUIT_TIMEOUT_MS = 30_000;

export async function withStorageDaemon<T>(runDir: string, domain: string, images: QsdImage[], fn: (s: QsdSession) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(runDir, 'qsd-'));
  const qmpSocket = join(dir, 'qmp.sock');
  const args: string[] = [];
  const nodes = images.map((img) => {
    const node = `${NODE_PREFIX}${img.target}`;
    const ro = img.readOnly ? ',read-only=on' : '';
    args.push('--blockdev', `driver=file,node-name=${node}-file,filename=${img.image.replace(/,/g, ',,')}${ro}`);
    args.push('--blockdev', `driver=${img.format ?? 'qcow2'},node-name=${node},file=${node}-file${ro}`);
    return { target: img.target, node };
  });
  args.push('--chardev', `socket,id=m,path=${qmpSocket},server=on,wait=off`, '--monitor', 'chardev=m');
  const child = execa('qemu-storage-daemon', args, { stdin: 'ignore', stdout: 'ignore', stderr: 'pipe', reject: false, buffer: false });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => { stderr = (stderr + c.toString()).slice(-4000); });
  const exited = child.then((r) => r.exitCode ?? null);
  let qmp: QmpClient | undefined;
  try {
    let dead = false;
    void exited.then(() => { dead = true; });
    qmp = await pollUntil(async () => {
      if (dead) {
        const locked = /lock|Failed to get .* lock/i.test(stderr);
        throw new VirtcbtError(`qemu-storage-daemon could not open the images: ${stderr.trim() || 'it exited'}`, {
          domain,
          hint: locked ? 'The images are in use (is the domain running, or another tool holding them?)' : 'Check the image paths with `virsh domblklist`',
        });
      }
      return QmpClient.connect(qmpSocket, { domain, timeoutMs: 5_000 }).catch(() => undefined);
    }, 'starting qemu-storage-daemon', { timeoutMs: 30_000, intervalMs: 20 });
    return await fn({ qmp, nbdSocket: join(dir, 'nbd.sock'), nodes, pid: child.pid! });
  } finally {
    if (qmp?.isOpen) {
      await qmp.execute('quit').catch(() => undefined);
      await qmp.close().catch(() => undefined);
    }
    const t = setTimeout(() => child.kill('SIGKILL'), QUIT_TIMEOUT_MS);
    if (child.exitCode === null && !qmp) child.kill('SIGTERM');
    await exited;
    clearTimeout(t);
    await rm(dir, { recursive: true, force: true });
  }
}

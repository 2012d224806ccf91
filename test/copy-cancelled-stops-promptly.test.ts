// Cancelling a large copy with the job's AbortSignal: copyExtents rejects with the signal's reason
// within a short deadline, also when the source server has stopped answering (requests in flight
// are failed, not waited for), and no qemu-nbd or qemu-storage-daemon process is left behind.
import { join } from 'node:path';
import { execa } from 'execa';
import { link } from 'node:fs/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import { NbdEndpoint, NullEndpoint, copyExtents, openImageEndpoint, serveImage, wholeDisk } from '../src/copy/index.js';
import { CONTEXT_BASE_ALLOCATION } from '../src/nbd/index.js';
import { withStorageDaemon } from '../src/qsd/index.js';
import { addReadOnlyExport, ensureNbdServer, nbdUnixUri } from '../src/snapshot/index.js';
import { pidAlive } from '../src/util/process.js';
import { pollUntil } from '../src/util/abort.js';
import { MiB, tempDir } from './support/files.js';
import { onCleanup, useCleanup } from './support/cleanup.js';

useCleanup();

const SIZE = 1024 * MiB;
/** Data in the source: long enough a copy that it is cancelled in the middle. */
const DATA = 640 * MiB;
/** The copy is cancelled once this much is done. */
const CANCEL_AT = 32 * MiB;
/** From abort to rejection, at most. */
const PROMPT_MS = 2_000;

/** The one source image of the file, written once (every test only reads it). */
let pristineSource: string;

beforeAll(async () => {
  pristineSource = join(tempDir('cancel-source'), 'source.qcow2');
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', pristineSource, String(SIZE)]);
  // Cache mode unsafe: the data is in the file when qemu-io exits; only fsyncs are skipped.
  await execa('qemu-io', ['-t', 'unsafe', '-f', 'qcow2', '-c', `write -P 0x3c 0 ${DATA}`, pristineSource]);
});

/**
 * The source under the test's own `dir` (a hard link to the file's source image: nothing copied):
 * the processes serving it name `dir`, which is how processesIn finds what a test left.
 */
async function makeSource(dir: string): Promise<string> {
  const path = join(dir, 'source.qcow2');
  await link(pristineSource, path);
  return path;
}

/** Processes whose command line names `dir` (qemu-nbd serving an image there, qemu-storage-daemon on one). */
async function processesIn(dir: string): Promise<string> {
  return (await execa('pgrep', ['-a', '-f', dir], { reject: false })).stdout.trim();
}

/** Runs `copy` and returns how long after the abort it settled, and with what. */
async function timeCancel(copy: (signal: AbortSignal, cancel: () => void) => Promise<unknown>) {
  const ctl = new AbortController();
  const reason = new Error('cancelled by the test');
  let abortedAt = 0;
  const cancel = () => {
    if (abortedAt) return;
    abortedAt = performance.now();
    ctl.abort(reason);
  };
  const outcome = await copy(ctl.signal, cancel).then((v) => ({ resolved: v }), (err: unknown) => ({ rejected: err }));
  expect(abortedAt, 'the copy was cancelled in the middle').toBeGreaterThan(0);
  return { outcome, reason, ms: performance.now() - abortedAt };
}

describe('a cancelled copy stops promptly', () => {
  it('from a hung qemu-nbd source to null: the reads in flight fail with the reason at once, qemu-nbd goes', async () => {
    const dir = tempDir('cancel-read');
    const source = await makeSource(dir);
    let srcPid = 0;
    const { outcome, reason, ms } = await timeCancel(async (signal, cancel) => {
      const src = await serveImage(source, { runDir: dir, signal });
      srcPid = src.pid;
      onCleanup(async () => { try { process.kill(src.pid, 'SIGCONT'); } catch { /* gone */ } await src.kill(); });
      return copyExtents(src.endpoint, new NullEndpoint(SIZE), wholeDisk(src.endpoint), {
        signal,
        onProgress: (p) => {
          if (p.done < CANCEL_AT) return;
          // The source stops answering with reads in flight: only failing them ends the copy.
          process.kill(srcPid, 'SIGSTOP');
          cancel();
        },
      });
    });
    expect(outcome).toEqual({ rejected: reason });
    expect(ms, 'ms from abort to rejection').toBeLessThan(PROMPT_MS);
    // SIGTERM waits on a stopped process; the endpoint's SIGKILL follows after its grace period.
    await pollUntil(async () => !pidAlive(srcPid) && (await processesIn(dir)) === '', 'qemu-nbd to go', { timeoutMs: 15_000, intervalMs: 50 });
  });

  it('into a hung qemu-nbd target (an existing image): the writes in flight fail with the reason at once, both qemu-nbd go', async () => {
    const dir = tempDir('cancel-write');
    const source = await makeSource(dir);
    const target = join(dir, 'target.raw');
    await execa('qemu-img', ['create', '-q', '-f', 'raw', target, String(SIZE)]);
    let dstPid = 0;
    const { outcome, reason, ms } = await timeCancel(async (signal, cancel) => {
      const src = await serveImage(source, { runDir: dir, signal });
      onCleanup(() => src.kill());
      const dst = await openImageEndpoint(target, { runDir: dir, writable: true, signal });
      dstPid = dst.pid;
      onCleanup(async () => { try { process.kill(dst.pid, 'SIGCONT'); } catch { /* gone */ } await dst.kill(); });
      return copyExtents(src.endpoint, dst.endpoint, wholeDisk(src.endpoint), {
        signal,
        onProgress: (p) => {
          if (p.done < CANCEL_AT) return;
          process.kill(dstPid, 'SIGSTOP');
          cancel();
        },
      });
    });
    expect(outcome).toEqual({ rejected: reason });
    expect(ms, 'ms from abort to rejection').toBeLessThan(PROMPT_MS);
    await pollUntil(async () => !pidAlive(dstPid) && (await processesIn(dir)) === '', 'qemu-nbd processes to go', { timeoutMs: 15_000, intervalMs: 50 });
  });

  it('from qemu-storage-daemon: withStorageDaemon rejects with the reason at once, the daemon has quit and the copy ended', async () => {
    const dir = tempDir('cancel-qsd');
    const source = await makeSource(dir);
    let qsdPid = 0;
    let copyEnded = false;
    const { outcome, reason, ms } = await timeCancel((signal, cancel) => withStorageDaemon(dir, 'vm', [{ target: 'vda', image: source, readOnly: true }], async (s) => {
      qsdPid = s.pid;
      onCleanup(() => { if (pidAlive(s.pid)) process.kill(s.pid, 'SIGKILL'); });
      await ensureNbdServer(s.qmp, s.nbdSocket);
      await addReadOnlyExport(s.qmp, { id: 'e', node: s.nodes[0]!.node, name: 'e' });
      // No signal here: what stops this copy is the daemon going away.
      const src = await NbdEndpoint.open(nbdUnixUri(s.nbdSocket, 'e'), { metaContexts: [CONTEXT_BASE_ALLOCATION] });
      onCleanup(() => src.client.destroy());
      const copy = copyExtents(src, new NullEndpoint(SIZE), wholeDisk(src), {
        onProgress: (p) => { if (p.done >= CANCEL_AT) cancel(); },
      });
      copy.then(() => { copyEnded = true; }, () => { copyEnded = true; });
      return copy;
    }, { signal }));
    expect(outcome).toEqual({ rejected: reason });
    expect(ms, 'ms from abort to rejection').toBeLessThan(PROMPT_MS);
    expect(pidAlive(qsdPid), 'qemu-storage-daemon has exited when withStorageDaemon rejects').toBe(false);
    expect(await processesIn(dir)).toBe('');
    await pollUntil(() => copyEnded, 'the copy inside to end', { timeoutMs: PROMPT_MS, intervalMs: 20 });
  });
});

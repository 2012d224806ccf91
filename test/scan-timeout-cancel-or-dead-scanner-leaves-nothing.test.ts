// A scan that times out, is cancelled, or whose scanner dies mid-job leaves nothing on the
// hypervisor: no export, node, job, overlay file, front end or registry record, and the scanner's
// consumer does not move. The scanner here is a stand-in HTTPS server with mutual TLS that accepts
// the job and never answers (a peer that hangs: what a real scanner cannot be made to show).
import { createServer, type Server } from 'node:https';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { execa } from 'execa';
import { beforeAll, describe, expect, it } from 'vitest';
import { pollUntil } from '../src/util/abort.js';
import { tempDir } from './support/files.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, virsh, type LibvirtGuest } from './support/libvirt.js';
import { makeCa, makeClientDir, makeServerDir } from './support/tls-certs.js';

useCleanup();

let daemon: TestDaemon;
let guest: LibvirtGuest;
let server: Server;
/** Open job requests: the stand-in holds them until told otherwise. */
const held: { destroy(): void }[] = [];
/** A verdict the stand-in answers with instead of hanging. */
let answer: object | undefined;

async function leftovers(): Promise<string[]> {
  const out: string[] = [];
  const q = async (cmd: string) => JSON.parse((await virsh(['qemu-monitor-command', guest.name, JSON.stringify({ execute: cmd })])).stdout).return as any[];
  for (const n of await q('query-named-block-nodes')) if (/^vcbt-/.test(n['node-name'])) out.push(`node ${n['node-name']}`);
  for (const j of await q('query-block-jobs')) out.push(`job ${j.device}`);
  for (const e of await q('query-block-exports')) out.push(`export ${e.id}`);
  const fleece = join('/var/lib/libvirt/qemu/virtcbt-test/fleece', encodeURIComponent(guest.name));
  for (const f of (() => { try { return readdirSync(fleece); } catch { return []; } })()) out.push(`overlay ${f}`);
  for (const f of (() => { try { return readdirSync(join(daemon.stateDir, 'snapshots')); } catch { return []; } })()) out.push(`record ${f}`);
  const fronts = await execa('pgrep', ['-f', `qemu-storage-daemon.*virtcbt-test/run-${process.pid}`], { reject: false });
  if (fronts.stdout.trim()) out.push(`front ends ${fronts.stdout.trim()}`);
  return out;
}

beforeAll(async () => {
  const dir = tempDir('scan-faults');
  const ca = await makeCa(join(dir, 'ca'), 'virtcbt test CA');
  const exportServer = await makeServerDir(ca, join(dir, 'export-server'), ca, ['127.0.0.1']);
  const scannerServer = await makeServerDir(ca, join(dir, 'scanner-server'), ca, ['127.0.0.1']);
  const hv = await makeClientDir(ca, join(dir, 'hv'), ca, 'hv1');
  server = createServer({
    ca: readFileSync(join(scannerServer, 'ca-cert.pem')), cert: readFileSync(join(scannerServer, 'server-cert.pem')),
    key: readFileSync(join(scannerServer, 'server-key.pem')), requestCert: true, rejectUnauthorized: true,
  }, (req, res) => {
    if (req.method === 'GET') { res.end('{"ok":true}'); return; }
    // Accepts the job, says so, and then hangs (or answers, as `answer` says).
    res.writeHead(200, { 'content-type': 'application/x-ndjson' });
    res.write('{"type":"accepted"}\n');
    if (answer) {
      let body = '';
      req.on('data', (c: Buffer) => { body += c.toString(); });
      req.on('end', () => {
        const job = JSON.parse(body);
        res.end(JSON.stringify({ ...answer, type: 'result', id: job.id, domain: job.domain }) + '\n');
      });
      return;
    }
    held.push({ destroy: () => req.socket.destroy() });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  onCleanup(() => new Promise<void>((r) => { for (const h of held) h.destroy(); server.close(() => r()); }));
  const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  guest = await startLibvirtGuest({ name: 'scanflt', scratchFormat: 'qcow2', start: false });
  daemon = await startTestDaemon({
    config: {
      snapshot: { remote: { bind: '127.0.0.1', port: 0, tlsDir: exportServer, deadlineSeconds: 600 } },
      scan: { scanners: [{ name: 'hangs', url, identity: 'CN=scanner', tlsDir: hv }], timeoutSeconds: 4, quarantine: 'none' },
    },
  });
  await daemon.cli(['enable', guest.name]);
  await guest.start();
  await pollUntil(async () => (await daemon.cliJson(['status', guest.name])).connected, 'virtcbtd to connect', { timeoutMs: 60_000, intervalMs: 250 });
});

async function consumerLast(): Promise<number | null | undefined> {
  const s = await daemon.cliJson(['status', guest.name]);
  return s.consumers?.find((c: { name: string }) => c.name === 'scan.hangs')?.last ?? null;
}

describe('a scan that does not end well leaves nothing behind', () => {
  it('is cut short by the scanner\'s time limit: nothing found, but the consumer stays for the next scan', async () => {
    const verdict = (limitsHit: object[]) => ({
      modes: { vda: 'full' }, infected: [], notScanned: [], limitsHit, complete: limitsHit.length === 0, seconds: 1,
      skipped: limitsHit.length ? [{ disk: 'vda', partition: 0, path: '/big', reason: 'time limit' }] : [],
      scanned: { files: 3, bytesRead: 4096, nbdBytesRead: 8192, filesOpened: 3 },
    });
    answer = verdict([{ limit: 'maxSeconds', value: 1, files: 1 }]);
    onCleanup(() => { answer = undefined; });
    const last = await consumerLast();
    const r = await daemon.cli(['scan', guest.name], { reject: false });
    // Nothing found in what was read, but not everything was: never exit 0 (clean).
    expect(r.exitCode, r.stderr).toBe(11);
    expect(r.stdout).toMatch(/limit hit: maxSeconds 1/);
    expect(r.stdout).toMatch(/cut short \(time limit 1 s\): the scanner's consumer did not move/);
    expect(await consumerLast()).toBe(last);
    await pollUntil(async () => (await leftovers()).length === 0, 'the scan\'s snapshot to go', { timeoutMs: 30_000, intervalMs: 100 });
    // The same answer without the limit: the consumer moves.
    answer = verdict([]);
    expect((await daemon.cli(['scan', guest.name], { reject: false })).exitCode).toBe(0);
    expect(await consumerLast()).toBeGreaterThan(last ?? -1);
  });

  it('times out', async () => {
    const last = await consumerLast();
    const r = await daemon.cli(['scan', guest.name], { reject: false });
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/time|abort/i);
    await pollUntil(async () => (await leftovers()).length === 0, 'the timed-out scan\'s snapshot to go', { timeoutMs: 30_000, intervalMs: 100 });
    expect(await consumerLast()).toBe(last);
  });

  it('is cancelled', async () => {
    const last = await consumerLast();
    const run = daemon.cli(['scan', guest.name], { reject: false });
    const job = await pollUntil(async () => (await daemon.cliJson(['jobs'])).jobs.find((j: any) => j.kind === 'scan' && j.state === 'running' && j.progress?.step === 'scanning'),
      'the scan to hand its job over', { timeoutMs: 30_000, intervalMs: 50 });
    await daemon.cli(['jobs', 'cancel', job.id], { reject: false });
    expect((await run).exitCode).not.toBe(0);
    await pollUntil(async () => (await leftovers()).length === 0, 'the cancelled scan\'s snapshot to go', { timeoutMs: 30_000, intervalMs: 100 });
    expect(await consumerLast()).toBe(last);
  });

  it('loses its scanner mid-job', async () => {
    const last = await consumerLast();
    const before = held.length;
    const run = daemon.cli(['scan', guest.name], { reject: false });
    await pollUntil(() => held.length > before, 'the scanner to hold the job', { timeoutMs: 30_000, intervalMs: 20 });
    held.at(-1)!.destroy();
    const r = await run;
    expect(r.exitCode).not.toBe(0);
    await pollUntil(async () => (await leftovers()).length === 0, 'the scan\'s snapshot to go', { timeoutMs: 30_000, intervalMs: 100 });
    expect(await consumerLast()).toBe(last);
  });
});

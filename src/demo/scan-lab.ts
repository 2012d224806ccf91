// The demo's scanner host, on this machine: a CA and the credentials a hypervisor and a scanner
// need (as `virtcbt certs` makes them), a private clamd that knows one demo signature (no
// signature download here; a real scanner host gets ClamAV's with freshclam), and virtcbt-scanner
// with mutual TLS on 127.0.0.1. What virtcbtd needs to use it comes back as configuration.
// Everything runs as the demo's user (root, for libvirt); systemd/virtcbt-scanner.service runs the
// scanner as its own unprivileged user.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { repoRoot } from '../guestimage/index.js';
import { ClamdClient, SCANNER_NODE_FLAGS } from '../scan/scanner/index.js';
import { createCa, issueClientCredentials, issueServerCredentials } from '../tls/index.js';
import { pollUntil } from '../util/abort.js';
import { VirtcbtError } from '../util/errors.js';

/** The EICAR test string, put together here so that this file is not itself "infected". */
export const EICAR = ['X5O!P%@AP[4\\PZX54(P^)7CC)7}$', 'EICAR-STANDARD-ANTIVIRUS', '-TEST-FILE!$H+H*'].join('');
/** The demo's own body signature on EICAR's middle part (clamd names it NAME.UNOFFICIAL). */
export const DEMO_SIGNATURE = 'Virtcbt.Demo.EICAR';

export interface ScanLab {
  /** What virtcbtd's configuration needs: snapshot.remote and scan. */
  daemonConfig: Record<string, unknown>;
  stop(): Promise<void>;
}

function started(child: ChildProcess, what: string, ready: (out: string) => boolean): Promise<string> {
  let out = '';
  child.stderr?.on('data', (b: Buffer) => { out += b.toString(); });
  return pollUntil(() => {
    if (child.exitCode !== null || child.signalCode !== null) throw new VirtcbtError(`${what} exited at start: ${out.trim().slice(-2000)}`);
    return ready(out) ? out : undefined;
  }, `${what} to start`, { timeoutMs: 120_000, intervalMs: 50 });
}

export async function startScanLab(dir: string): Promise<ScanLab> {
  await mkdir(join(dir, 'clamd', 'db'), { recursive: true });
  const children: ChildProcess[] = [];
  const stop = async () => {
    for (const c of children.reverse()) {
      if (c.exitCode !== null || c.signalCode !== null) continue;
      const exited = new Promise<void>((r) => c.once('exit', () => r()));
      c.kill('SIGTERM');
      await exited;
    }
  };
  try {
    const ca = await createCa(join(dir, 'ca'), { cn: 'virtcbt demo CA', days: 1 });
    const exportServer = await issueServerCredentials(ca, join(dir, 'export-server'), { cn: 'localhost', ipAddresses: ['127.0.0.1'], days: 1 });
    const scannerNbd = await issueClientCredentials(ca, join(dir, 'scanner-nbd'), { cn: 'scanner', days: 1 });
    const scannerTls = await issueServerCredentials(ca, join(dir, 'scanner-tls'), { cn: 'localhost', ipAddresses: ['127.0.0.1'], days: 1 });
    const hypervisor = await issueClientCredentials(ca, join(dir, 'hypervisor'), { cn: 'hv1', days: 1 });

    const socket = join(dir, 'clamd', 'clamd.sock');
    await writeFile(join(dir, 'clamd', 'db', 'virtcbt-demo.ndb'), `${DEMO_SIGNATURE}:0:*:${Buffer.from('EICAR-STANDARD-ANTIVIRUS-TEST-FILE').toString('hex')}\n`);
    const conf = join(dir, 'clamd', 'clamd.conf');
    await writeFile(conf, [
      `LocalSocket ${socket}`, `DatabaseDirectory ${join(dir, 'clamd', 'db')}`, 'Foreground yes', `LogFile ${join(dir, 'clamd', 'clamd.log')}`,
      'MaxThreads 2', `StreamMaxLength ${64 * 1024 * 1024}`, `TemporaryDirectory ${join(dir, 'clamd')}`, 'SelfCheck 0',
      // As the README's install steps: a file clamd stops short of is reported, not answered OK.
      'AlertExceedsMax yes',
    ].join('\n') + '\n');
    const clamd = spawn('clamd', ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
    children.push(clamd);
    const client = new ClamdClient(socket, 5_000);
    await pollUntil(async () => {
      if (clamd.exitCode !== null) throw new VirtcbtError(`clamd exited at start (see ${join(dir, 'clamd', 'clamd.log')})`);
      return existsSync(socket) && (await client.command('PING').catch(() => '')) === 'PONG';
    }, 'clamd to answer', { timeoutMs: 120_000, intervalMs: 50 });

    const scannerConfig = join(dir, 'scanner.json');
    await writeFile(scannerConfig, JSON.stringify({
      listen: { host: '127.0.0.1', port: 0 }, tlsDir: scannerTls, allowedClients: ['CN=hv1'], nbdTlsDir: scannerNbd,
      // Its own spool, not the host's /run/virtcbt-scanner: the demo leaves nothing behind.
      clamd: { socket, timeoutSeconds: 120, spoolDir: join(dir, 'spool') },
      limits: { maxFileBytes: 64 * 1024 * 1024, maxFiles: 1_000_000, maxSeconds: 600, streamMaxLength: 64 * 1024 * 1024, concurrency: 2 },
      maxJobs: 2, log: { level: 'info' }, ownerIndex: { saveDir: join(dir, 'scanner-state') },
    }));
    const scanner = spawn(process.execPath, [...SCANNER_NODE_FLAGS, join(repoRoot(), 'dist', 'src', 'scan', 'scanner', 'main.js'), '--config', scannerConfig], {
      stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, VIRTCBT_SCANNER_CONFIG: undefined },
    });
    children.push(scanner);
    const out = await started(scanner, 'virtcbt-scanner', (o) => /info: listening host=\S+ port=\d+/.test(o));
    const port = /info: listening host=\S+ port=(\d+)/.exec(out)![1];
    return {
      daemonConfig: {
        snapshot: { remote: { bind: '127.0.0.1', port: 0, tlsDir: exportServer, deadlineSeconds: 600 } },
        scan: { scanners: [{ name: 'demo', url: `https://127.0.0.1:${port}`, identity: 'CN=scanner', tlsDir: hypervisor }], quarantine: 'link-down', fullEveryHours: 0 },
      },
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

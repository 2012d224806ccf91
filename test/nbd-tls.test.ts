// NBD over TLS with x509 certificates against qemu-nbd --tls-creds: works with the right certificates,
// refuses wrong ones, and never sends data in clear when TLS was asked for.
import { createServer } from 'node:net';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileEndpoint, NbdEndpoint, copyExtents, wholeDisk } from '../src/copy/index.js';
import { NbdClient, NbdProtocolError } from '../src/nbd/index.js';
import { qemuIo, startQemuNbd, tempDir, type RunningServer, type TempDir } from './support/nbd-servers.js';
import { makeCa, makeClientDir, makeServerDir } from './support/tls-certs.js';

const MiB = 1024 * 1024;

let dir: TempDir;
let image: string;
let good: string; // client dir: right CA, client cert from the right CA
let wrongClient: string; // client cert signed by another CA
let wrongServerCa: string; // trusts another CA than the one that signed the server
let serverDir: string;
const servers: RunningServer[] = [];

function tlsObject(id: string): string {
  return `tls-creds-x509,id=${id},dir=${serverDir},endpoint=server,verify-peer=on`;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

beforeAll(async () => {
  dir = tempDir('nbd-tls');
  const ca = await makeCa(join(dir.path, 'ca'), 'virtcbt test CA');
  const other = await makeCa(join(dir.path, 'other-ca'), 'some other CA');
  serverDir = await makeServerDir(ca, join(dir.path, 'server'));
  good = await makeClientDir(ca, join(dir.path, 'client'));
  wrongClient = await makeClientDir(other, join(dir.path, 'wrong-client'), ca);
  wrongServerCa = await makeClientDir(ca, join(dir.path, 'wrong-trust'), other);
  image = join(dir.path, 'disk.qcow2');
  await execa('qemu-img', ['create', '-f', 'qcow2', image, String(32 * MiB)]);
  await qemuIo(image, ['write -P 0x61 0 1M', `write -P 0x62 ${20 * MiB} 3M`]);
});

afterAll(async () => {
  await Promise.allSettled(servers.map((s) => s.stop()));
  dir?.remove();
});

async function tlsServer(extra: { tcpPort?: number } = {}): Promise<RunningServer> {
  const s = await startQemuNbd(image, dir.path, {
    readOnly: true, objects: [tlsObject('tls0')], tlsCreds: 'tls0',
    tcp: extra.tcpPort ? { host: '127.0.0.1', port: extra.tcpPort } : undefined,
  });
  servers.push(s);
  return s;
}

describe('NBD TLS', () => {
  it('reads and maps an export over TLS with the right certificates, and the data equals the image', async () => {
    const s = await tlsServer();
    const uri = `nbds+unix:///?socket=${s.socket}&tls-certificates=${good}`;
    const src = await NbdEndpoint.open(uri, { metaContexts: ['base:allocation'] });
    expect(src.client.info.tls).toBe(true);
    const out = join(dir.path, 'out.raw');
    const dst = await FileEndpoint.open(out, { create: { size: src.size } });
    try {
      await copyExtents(src, dst, wholeDisk(src));
    } finally {
      await Promise.allSettled([src.close(), dst.close()]);
    }
    const cmp = await execa('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', out, image], { reject: false });
    expect(cmp.stdout).toMatch(/Images are identical/);
  });

  it('works over TCP, checking the server certificate against the address', async () => {
    const port = await freePort();
    await tlsServer({ tcpPort: port });
    const c = await NbdClient.connect(`nbds://127.0.0.1:${port}/?tls-certificates=${good}`);
    try {
      const b = Buffer.alloc(MiB);
      await c.pread(b, 0);
      expect(b.every((x) => x === 0x61)).toBe(true);
    } finally {
      await c.close();
    }
    // The certificate names localhost and 127.0.0.1, not this name.
    await expect(NbdClient.connect(`nbds://127.0.0.1:${port}/?tls-certificates=${good}&tls-hostname=elsewhere.example`, { timeoutMs: 10_000 }))
      .rejects.toThrow(/TLS handshake .* failed.*elsewhere\.example/);
  });

  it('is refused by the server with a client certificate from the wrong CA', async () => {
    const s = await tlsServer();
    const err = await NbdClient.connect(`nbds+unix:///?socket=${s.socket}&tls-certificates=${wrongClient}`, { timeoutMs: 10_000 })
      .then(async (c) => { await c.close(); return undefined; }, (e: unknown) => e);
    expect(err).toBeInstanceOf(NbdProtocolError);
    expect((err as Error).message).toMatch(/after the TLS handshake/);
    expect((err as NbdProtocolError).hint).toMatch(/refused our client certificate/);
  });

  it('refuses a server whose certificate our CA did not sign', async () => {
    const s = await tlsServer();
    await expect(NbdClient.connect(`nbds+unix:///?socket=${s.socket}&tls-certificates=${wrongServerCa}`, { timeoutMs: 10_000 }))
      .rejects.toThrow(/TLS handshake with .* failed: .*(self.signed|unable to verify|certificate)/i);
  });

  it('refuses to continue in clear when TLS was asked for but the server has none', async () => {
    const s = await startQemuNbd(image, dir.path, { readOnly: true });
    servers.push(s);
    await expect(NbdClient.connect(`nbds+unix:///?socket=${s.socket}&tls-certificates=${good}`, { timeoutMs: 10_000 }))
      .rejects.toThrow(/does not offer TLS.*refusing to send data in clear/);
  });

  it('tells a client without TLS that the server requires it', async () => {
    const s = await tlsServer();
    await expect(NbdClient.connect(`nbd+unix:///?socket=${s.socket}`, { timeoutMs: 10_000 })).rejects.toThrow(/requires TLS/);
  });
});

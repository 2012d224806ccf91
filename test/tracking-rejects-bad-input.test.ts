// Bad input gets a clear error and changes nothing: unknown domain, no qcow2 disk, raw disks, no
// guest agent, bad consumer names, a socket the user may not open, a corrupt change-log file.
import { execa } from 'execa';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync, chmodSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { IMAGES_BASE, virsh } from './support/libvirt.js';

useCleanup();
let daemon: TestDaemon;
const dir = join(IMAGES_BASE, `virtcbt-test-badinput-${process.pid}-000000`);

/** Defines (never starts) a domain with the given disks; no boot needed to test enable's checks. */
async function defineDomain(name: string, disks: { dev: string; format: 'raw' | 'qcow2' }[], agent: boolean): Promise<string> {
  mkdirSync(dir, { recursive: true });
  const devs = [];
  for (const d of disks) {
    const file = join(dir, `${name}-${d.dev}.${d.format}`);
    await execa('qemu-img', ['create', '-q', '-f', d.format, file, '16M']);
    devs.push(`<disk type='file' device='disk'><driver name='qemu' type='${d.format}'/><source file='${file}'/><target dev='${d.dev}' bus='virtio'/></disk>`);
  }
  const full = `virtcbt-test-${name}-${process.pid}-000000`;
  const xml = `<domain type='qemu'><name>${full}</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os>
<devices>${devs.join('')}${agent ? "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>" : ''}</devices></domain>`;
  const f = join(dir, `${name}.xml`);
  writeFileSync(f, xml);
  await virsh(['define', f]);
  onCleanup(() => virsh(['undefine', full], { reject: false }));
  return full;
}

const inactiveXml = async (name: string) => (await virsh(['dumpxml', '--inactive', name])).stdout;

beforeAll(async () => {
  daemon = await startTestDaemon();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('enable refuses what it cannot track, and changes nothing', () => {
  it('an unknown domain: exit 4, named', async () => {
    const r = await daemon.cli(['enable', 'no-such-domain-xyz'], { reject: false });
    expect(r.exitCode).toBe(4);
    expect(r.stderr).toMatch(/no libvirt domain named 'no-such-domain-xyz'.*virsh list --all/);
  });

  it('raw disks: names them and suggests --exclude or conversion', async () => {
    const name = await defineDomain('raw', [{ dev: 'vda', format: 'qcow2' }, { dev: 'vdb', format: 'raw' }], true);
    const before = await inactiveXml(name);
    const r = await daemon.cli(['enable', name], { reject: false });
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/vdb is raw: persistent dirty bitmaps need qcow2 disks.*--exclude vdb/);
    expect(await inactiveXml(name)).toBe(before);
    const st = await daemon.cliJson(['status']);
    expect(st.domains).toEqual([]);
  });

  it('no qcow2 disk at all', async () => {
    const name = await defineDomain('noqcow', [{ dev: 'vda', format: 'raw' }], true);
    const r = await daemon.cli(['enable', name, '--exclude', 'vda'], { reject: false });
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/no writable qcow2 disk/);
  });

  it('no guest agent channel: refused unless --no-agent', async () => {
    const name = await defineDomain('noagent', [{ dev: 'vda', format: 'qcow2' }], false);
    const before = await inactiveXml(name);
    const r = await daemon.cli(['enable', name], { reject: false });
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/no qemu-guest-agent channel.*--no-agent/);
    expect(await inactiveXml(name)).toBe(before);
    const ok = await daemon.cliJson(['enable', name, '--no-agent']);
    expect(ok.disks.map((d: { target: string }) => d.target)).toEqual(['vda']);
    await daemon.cli(['disable', name]);
    expect(await inactiveXml(name)).not.toContain('qemu:commandline');
  });

  it('consumer names with / or spaces', async () => {
    const name = await defineDomain('names', [{ dev: 'vda', format: 'qcow2' }], true);
    await daemon.cli(['enable', name]);
    for (const bad of ['a/b', 'with space', '../x', '']) {
      const r = await daemon.cli(['consumer', 'add', name, bad], { reject: false });
      expect(r.exitCode, bad).toBe(2);
    }
    expect((await daemon.cliJson(['consumer', 'list', name])).consumers).toEqual([]);
    const r = await daemon.cli(['changes', name, '--consumer', 'ghost'], { reject: false });
    expect(r.exitCode).toBe(4);
    expect(r.stderr).toMatch(/no consumer 'ghost'.*consumer add/);
    await daemon.cli(['disable', name]);
  });
});

describe('daemon-side bad input', () => {
  it('a socket the user may not open: a clear permission error', async () => {
    // Root without the capabilities that override file permissions, and a socket its owner may
    // not open either: the kernel refuses the connect as it does for a user outside the socket's
    // group. (Not another uid: the checkout may sit in a directory only root can read.)
    const mode = statSync(daemon.socket).mode & 0o7777;
    chmodSync(daemon.socket, 0);
    try {
      const noDac = '-dac_override,-dac_read_search';
      const r = await execa('setpriv', [`--inh-caps=${noDac}`, `--bounding-set=${noDac}`, 'node', 'dist/src/cli/main.js', '--config', daemon.configFile, 'status'], { reject: false });
      expect(r.exitCode, r.stderr).toBe(3);
      expect(r.stderr).toMatch(/permission denied on .*virtcbtd\.sock.*daemon\.socketGroup/);
    } finally {
      chmodSync(daemon.socket, mode);
    }
  });

  it('the daemon not running: exit 3 and how to start it', async () => {
    await daemon.stop();
    const r = await daemon.cli(['status'], { reject: false });
    expect(r.exitCode).toBe(3);
    expect(r.stderr).toMatch(/virtcbtd is not running/);
  });

  it('a corrupt change-log file: the daemon refuses to start, says what to do, and leaves the file alone', async () => {
    await daemon.stop(); // (an earlier case may have stopped it already)
    const db = join(daemon.stateDir, 'changelog.db');
    rmSync(`${db}-wal`, { force: true });
    rmSync(`${db}-shm`, { force: true });
    writeFileSync(db, Buffer.concat([Buffer.from('SQLite format 3\0'), Buffer.alloc(4096, 0x5a)]));
    const hash = () => createHash('sha256').update(readFileSync(db)).digest('hex');
    const before = hash();
    await expect(daemon.start()).rejects.toThrow(/changelog\.db/);
    expect(hash()).toBe(before);
    expect(daemon.log()).toMatch(/move it aside|full/i);
  });
});

// `virtcbt nbd map|info|copy` run as a process: map output equals nbdinfo --map byte for byte, copy equals the image.
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { lcg, qemuIo, startQemuNbd, tempDir, type RunningServer, type TempDir } from './support/nbd-servers.js';

const MiB = 1024 * 1024;
const SIZE = 3 * 1024 * MiB;
const CLI = join(import.meta.dirname, '..', 'dist', 'src', 'cli', 'main.js');

const virtcbt = (...args: string[]) => execa('node', [CLI, ...args], { reject: false });

let dir: TempDir;
let image: string;
let server: RunningServer | undefined;

beforeAll(async () => {
  dir = tempDir('nbd-cli');
  image = join(dir.path, 'disk.qcow2');
  await execa('qemu-img', ['create', '-f', 'qcow2', image, String(SIZE)]);
  const rnd = lcg(11);
  const cmds = Array.from({ length: 25 }, (_, i) => `write -P 0x${(i + 1).toString(16)} ${(rnd() % (SIZE / 65536)) * 65536} ${65536 * (1 + (rnd() % 8))}`);
  await qemuIo(image, cmds);
  await execa('qemu-img', ['bitmap', '--add', image, 'b0']);
  await qemuIo(image, Array.from({ length: 15 }, () => `write -P 0xcd ${(rnd() % (SIZE / 4096)) * 4096} 8192`));
  await execa('qemu-img', ['bitmap', '--disable', image, 'b0']);
  server = await startQemuNbd(image, dir.path, { readOnly: true, bitmaps: ['b0'], allocationDepth: true, exportName: 'vda' });
});

afterAll(async () => {
  await server?.stop();
  dir?.remove();
});

describe('virtcbt nbd CLI', () => {
  it('map prints exactly what nbdinfo --map prints, plain and --json, for each context', async () => {
    const uri = server!.uri;
    for (const ctx of ['base:allocation', 'qemu:dirty-bitmap:b0', 'qemu:allocation-depth']) {
      const ours = await virtcbt('nbd', 'map', uri, '--context', ctx);
      expect(ours.exitCode, ours.stderr).toBe(0);
      const ref = await execa('nbdinfo', [`--map=${ctx}`, uri]);
      expect(ours.stdout).toBe(ref.stdout);
      const oursJson = await virtcbt('nbd', 'map', '--json', '--context', ctx, uri);
      const refJson = await execa('nbdinfo', ['--json', `--map=${ctx}`, uri]);
      expect(oursJson.stdout).toBe(refJson.stdout);
      expect(JSON.parse(oursJson.stdout).length).toBeGreaterThan(3);
    }
    const dflt = await virtcbt('nbd', 'map', uri);
    expect(dflt.stdout).toBe((await execa('nbdinfo', ['--map', uri])).stdout);
  });

  it('info names the size, the contexts and the flags', async () => {
    const r = await virtcbt('nbd', 'info', server!.uri);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toContain(`export-size: ${SIZE} (3G)`);
    expect(r.stdout).toContain('\t\tqemu:dirty-bitmap:b0');
    expect(r.stdout).toContain('is_read_only: true');
    const j = JSON.parse((await virtcbt('nbd', 'info', '--json', server!.uri)).stdout);
    expect(j['export-size']).toBe(SIZE);
    expect(j.contexts).toContain('base:allocation');
    const l = await virtcbt('nbd', 'list', server!.uri);
    expect(l.stdout.split('\n')).toContain('vda');
  });

  it('copy to a file gives the image; copy to null: reads it all', async () => {
    const out = join(dir.path, 'copy.raw');
    const r = await virtcbt('nbd', 'copy', server!.uri, out);
    expect(r.exitCode, r.stderr).toBe(0);
    const cmp = await execa('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', out, image], { reject: false });
    expect(cmp.stdout).toMatch(/Images are identical/);
    const n = await virtcbt('nbd', 'copy', server!.uri, 'null:');
    expect(n.exitCode, n.stderr).toBe(0);
    expect(n.stderr).toMatch(new RegExp(`copied ${SIZE} bytes`));
  });

  it('copy between two NBD exports gives an identical qcow2', async () => {
    const target = join(dir.path, 'target.qcow2');
    await execa('qemu-img', ['create', '-f', 'qcow2', target, String(SIZE)]);
    const t = await startQemuNbd(target, dir.path, {});
    try {
      const r = await virtcbt('nbd', 'copy', '--destination-is-zero', '--requests', '8', server!.uri, t.uri);
      expect(r.exitCode, r.stderr).toBe(0);
    } finally {
      await t.stop();
    }
    const cmp = await execa('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', target, image], { reject: false });
    expect(cmp.stdout).toMatch(/Images are identical/);
  });

  it('exits 2 on bad usage and 5 when the server is not there or refuses', async () => {
    expect((await virtcbt('nbd', 'map')).exitCode).toBe(2);
    expect((await virtcbt('nbd', 'map', 'http://x/')).exitCode).toBe(2);
    const gone = await virtcbt('nbd', 'map', `nbd+unix:///?socket=${join(dir.path, 'nothing.sock')}`);
    expect(gone.exitCode).toBe(5);
    expect(gone.stderr).toMatch(/ENOENT/);
    const ctx = await virtcbt('nbd', 'map', '--context', 'qemu:dirty-bitmap:zz', server!.uri);
    expect(ctx.exitCode).toBe(5);
    expect(ctx.stderr).toMatch(/does not offer metadata context "qemu:dirty-bitmap:zz"/);
  });
});

// Small helpers that touch nothing shared: sizes, temp directories, image comparison.
import { execa } from 'execa';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { onCleanup } from './cleanup.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;

/** A temp directory removed at teardown. */
export function tempDir(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), `virtcbt-${prefix}-`));
  onCleanup(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

/** qemu-img compare: exit 0 when the guest-visible contents are equal. */
export async function sameContent(a: string, aFormat: string, b: string, bFormat: string): Promise<{ same: boolean; detail: string }> {
  const r = await execa('qemu-img', ['compare', '-U', '-f', aFormat, '-F', bFormat, a, b], { reject: false });
  return { same: r.exitCode === 0, detail: (r.stdout + r.stderr).trim() };
}

// The configuration virtcbtd validated, published next to its socket with the identity of the file
// it came from. A CLI given the same, unchanged file (and no VIRTCBT_* variable) takes it from
// there instead of loading convict, which is ~15 ms of each command's start-up: the result is the
// one convict gave for that very file.
import { readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { schema, type VirtcbtConfig } from '../../config/schema.js';
import { fileStamp } from '../util/file-stamp.js';

const FORMAT = 'virtcbt-effective-config/1';
export const EFFECTIVE_CONFIG_FILE = 'config.effective.json';

/** The file a record was validated from: its absolute path and stamp (see util/file-stamp.ts). */
interface FileIdentity {
  path: string;
  stamp: string;
}

interface EffectiveRecord {
  format: string;
  schema: string;
  file: FileIdentity;
  config: VirtcbtConfig;
}

/** The file's identity now, and when it last changed (ns since the epoch). */
function fileIdentity(path: string): FileIdentity & { ctimeNs: bigint } {
  const st = statSync(path, { bigint: true });
  return { path: resolve(path), stamp: fileStamp(st), ctimeNs: st.ctimeNs };
}

const sameFile = (a: FileIdentity, b: FileIdentity) => a.path === b.path && a.stamp === b.stamp;

let fingerprint: string | undefined;

/** FNV-1a of the schema's JSON (defaults, docs, variables, enumerations): another schema, another record. */
export function schemaFingerprint(): string {
  if (fingerprint !== undefined) return fingerprint;
  const text = JSON.stringify(schema);
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return (fingerprint = `${text.length}-${h.toString(16)}`);
}

/** Where virtcbtd publishes the record: beside its control socket, which the CLI must find anyway. */
export function effectiveConfigPath(socket: string): string {
  return join(dirname(socket), EFFECTIVE_CONFIG_FILE);
}

/**
 * A file changed within this long of being validated is not published: timestamps are coarse (a
 * few ms), so a second write in the same tick, with the same size, would keep the identity.
 */
const RACY_NS = 1_000_000_000n;

/**
 * virtcbtd: validates `file` with `load` and publishes the result beside `socket` (its own), once
 * the file has not changed for RACY_NS, re-validating it then. Nothing is published when the file
 * changes while it is validated, names another socket, or fails validation (the CLI then
 * validates it itself and reports the problem). Returns whether it published.
 */
export async function publishEffectiveConfig(
  file: string, socket: string, load: (file: string) => VirtcbtConfig,
): Promise<boolean> {
  for (;;) {
    const { ctimeNs, ...before } = fileIdentity(file);
    const age = BigInt(Date.now()) * 1_000_000n - ctimeNs;
    if (age < RACY_NS) {
      const waitMs = Number((RACY_NS - (age < 0n ? 0n : age)) / 1_000_000n) + 10;
      // Unreferenced: a daemon stopping meanwhile does not wait for it.
      await new Promise<void>((r) => setTimeout(r, waitMs).unref());
      continue;
    }
    let config: VirtcbtConfig;
    try {
      config = load(file);
    } catch {
      return false;
    }
    if (!sameFile(fileIdentity(file), before)) continue;
    if (config.daemon.socket !== socket) return false;
    const record: EffectiveRecord = { format: FORMAT, schema: schemaFingerprint(), file: before, config };
    const path = effectiveConfigPath(socket);
    const tmp = `${path}.tmp-${process.pid}`;
    writeFileSync(tmp, JSON.stringify(record), { mode: 0o644 });
    renameSync(tmp, path);
    return true;
  }
}

/**
 * The configuration virtcbtd published for `file` if the file is still the one it validated and
 * the schema is this one; undefined otherwise (the caller validates the file itself). Reads the
 * file only to find the socket's directory; anything odd in it is left to the full validation.
 */
export function publishedConfigFor(file: string, defaultSocket: string): VirtcbtConfig | undefined {
  try {
    const raw = JSON.parse(readFileSync(file, 'utf8')) as { daemon?: { socket?: unknown } } | null;
    const socket = raw?.daemon?.socket ?? defaultSocket;
    if (typeof socket !== 'string' || socket === '') return undefined;
    const record = JSON.parse(readFileSync(effectiveConfigPath(socket), 'utf8')) as EffectiveRecord;
    if (record.format !== FORMAT || record.schema !== schemaFingerprint()) return undefined;
    if (!record.file || !sameFile(fileIdentity(file), record.file)) return undefined;
    // The record must describe the socket it sits beside (a file naming another socket is another daemon's).
    if (record.config?.daemon?.socket !== socket) return undefined;
    return record.config;
  } catch {
    return undefined;
  }
}

// Sync targets: an image file (qcow2 or raw, made when missing) or an NBD export on another host
// (nbd:// or nbds:// with TLS). Each has an identity recorded after every sync; a target whose
// identity differs next time is not the copy virtcbt brought up to date (replaced, written by
// someone else, another disk's copy) and is seeded again.
import { createHash } from 'node:crypto';
import { lstat, realpath } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join } from 'node:path';
import { UsageError } from '../util/errors.js';

export type SyncTarget =
  | { kind: 'file'; path: string; format?: 'qcow2' | 'raw' }
  | { kind: 'nbd'; uri: string };

export type TargetIdentity =
  | { kind: 'file'; dev: number; ino: number; size: number; mtimeMs: number }
  | { kind: 'nbd'; uri: string; size: number };

/** TARGET as given on the command line or in the config. */
export function parseTarget(spec: string, opts: { format?: 'qcow2' | 'raw' } = {}): SyncTarget {
  if (/^nbds?(\+unix)?:\/\//.test(spec)) return { kind: 'nbd', uri: spec };
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(spec)) throw new UsageError(`sync target ${spec}: only image files and nbd:// or nbds:// URIs are supported`);
  if (!isAbsolute(spec)) throw new UsageError(`sync target ${spec} must be an absolute path or an nbd:// / nbds:// URI`);
  const format = opts.format ?? (/\.(raw|img)$/i.test(spec) ? 'raw' : /\.qcow2$/i.test(spec) ? 'qcow2' : undefined);
  return { kind: 'file', path: spec, format };
}

/** The URI without its query (certificate paths) and credentials: names the target in records and messages. */
export function displayUri(uri: string): string {
  try {
    const u = new URL(uri);
    u.username = '';
    u.password = '';
    u.search = '';
    return u.toString();
  } catch {
    return uri.replace(/\?.*$/, '');
  }
}

/** A stable key for the target: the file's real directory and name, or the URI's host, port and export. */
export async function targetKey(t: SyncTarget): Promise<string> {
  if (t.kind === 'nbd') return displayUri(t.uri);
  const dir = await realpath(dirname(t.path)).catch(() => dirname(t.path));
  return join(dir, basename(t.path));
}

/** The change-log consumer that records what a target has: one per disk and target. */
export function syncConsumerName(disk: string, key: string): string {
  const h = createHash('sha256').update(key).digest('hex').slice(0, 12);
  return `sync.${disk}.${h}`.slice(0, 64);
}

/** Whether a change-log consumer is a sync target's (syncConsumerName). */
export function isSyncConsumer(name: string): boolean {
  return /^sync\..+\.[0-9a-f]{12}$/.test(name);
}

/** The change-log name that keeps an interrupted seed's history (see ChangeLog.pinHistory). */
export function seedPinName(consumer: string): string {
  return `${consumer}.seed`.slice(0, 64);
}

/** The sync consumer whose seed pin `name` is, or undefined when it is none. */
export function seedPinOwner(name: string): string | undefined {
  const consumer = name.endsWith('.seed') ? name.slice(0, -'.seed'.length) : undefined;
  return consumer !== undefined && isSyncConsumer(consumer) ? consumer : undefined;
}

export async function fileIdentity(path: string): Promise<TargetIdentity> {
  const st = await lstat(path);
  return { kind: 'file', dev: st.dev, ino: st.ino, size: st.size, mtimeMs: st.mtimeMs };
}

export function describeTarget(t: SyncTarget): string {
  return t.kind === 'file' ? t.path : displayUri(t.uri);
}

/** Why `now` is not the target recorded after the last sync, or undefined when it is. */
export function identityChange(recorded: TargetIdentity | undefined, now: TargetIdentity | undefined): string | undefined {
  if (!recorded) return 'virtcbt has not synced this disk to this target before';
  if (!now) return 'the target does not exist (it is created)';
  if (recorded.kind !== now.kind) return 'the target is of another kind than last time';
  if (recorded.kind === 'file' && now.kind === 'file') {
    if (recorded.dev !== now.dev || recorded.ino !== now.ino) return 'the target file was replaced since the last sync (another inode)';
    if (recorded.size !== now.size) return `the target file's size changed since the last sync (${recorded.size} → ${now.size} bytes)`;
    if (recorded.mtimeMs !== now.mtimeMs) return 'the target file was written since the last sync (its modification time changed): it may no longer be the copy virtcbt left';
    return undefined;
  }
  if (recorded.kind === 'nbd' && now.kind === 'nbd') {
    if (recorded.uri !== now.uri) return 'the target is another NBD export';
    if (recorded.size !== now.size) return `the target export's size changed (${recorded.size} → ${now.size} bytes)`;
  }
  return undefined;
}

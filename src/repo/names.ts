// Names inside a chain directory (REPO/DOMAIN/CONSUMER/): what restore points, their images and the
// repository's own files may be called, and the one way a name read from disk becomes a path.
import { join } from 'node:path';
import { VirtcbtError } from '../util/errors.js';

/** Consumer and disk target names, as the change log accepts them: one plain path component. */
export const PLAIN_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** `CONSUMER-NNNN`: the id of the consumer's restore point number `seq`. */
export function pointId(consumer: string, seq: number): string {
  return `${consumer}-${String(seq).padStart(4, '0')}`;
}

/** The sequence number of `id` when it is exactly the id `pointId` gives for `consumer`, else undefined. */
export function pointSeq(consumer: string, id: unknown): number | undefined {
  if (typeof id !== 'string' || !id.startsWith(`${consumer}-`)) return undefined;
  const digits = id.slice(consumer.length + 1);
  if (!/^\d{4,9}$/.test(digits)) return undefined;
  const seq = Number(digits);
  return seq >= 1 && pointId(consumer, seq) === id ? seq : undefined;
}

/** A point's image of one disk: `ID.TARGET.qcow2`, or `ID.TARGET.merged.qcow2` once a prune merged older points into it. */
export function imageName(id: string, target: string, merged = false): string {
  return `${id}.${target}${merged ? '.merged' : ''}.qcow2`;
}

/** The point an image of disk `target` belongs to, when `name` is such an image of `consumer`'s chain. */
export function imageOwner(consumer: string, target: string, name: unknown): { id: string; seq: number; merged: boolean } | undefined {
  if (typeof name !== 'string') return undefined;
  for (const merged of [false, true]) {
    const suffix = `.${target}${merged ? '.merged' : ''}.qcow2`;
    if (!name.endsWith(suffix)) continue;
    const id = name.slice(0, -suffix.length);
    const seq = pointSeq(consumer, id);
    if (seq !== undefined) return { id, seq, merged };
  }
  return undefined;
}

/** The manifest file of a point. */
export function manifestName(id: string): string {
  return `${id}.json`;
}

/**
 * The path of `name` inside the chain directory `dir`. Every path built from a name read from the
 * repository goes through here: anything but one plain component (a separator, '.', '..', a NUL,
 * an empty name) is refused, so no name can reach outside the directory.
 */
export function inChain(dir: string, name: string): string {
  if (typeof name !== 'string' || name === '' || name === '.' || name === '..' || /[/\\\0]/.test(name) || name.length > 255) {
    throw new VirtcbtError(`refusing the file name ${JSON.stringify(name)} read from the repository: it is not a file of the chain directory ${dir}`, {
      hint: 'The repository was changed by hand or damaged: run `virtcbt verify` and restore the file from a good copy',
    });
  }
  return join(dir, name);
}

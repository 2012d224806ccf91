// What the scanner keeps across a restart (ownerIndex.saveDir): its owner indexes, saved when it
// stops (owner-indexes.ts save/load), and the secret they hang on. The secret (32 random bytes,
// mode 0600, made once) gives the key of the granule digests, which must stay the same for digests
// read back to match, and the key that authenticates the saved file: a file this scanner did not
// write, or one changed since, is not used.
import { createHmac, randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomically } from '../../util/atomic-file.js';
import { UsageError } from '../../util/errors.js';
import { readRegularFileBytes } from '../../util/regular-file.js';

const SECRET_BYTES = 32;

export interface SavedState {
  /** Where the owner indexes are saved. */
  file: string;
  digestKey: Buffer;
  macKey: Buffer;
}

async function secretOf(dir: string): Promise<Buffer> {
  const path = join(dir, 'secret');
  const read = async () => {
    const { bytes } = await readRegularFileBytes(path, 1024);
    if (bytes.length !== SECRET_BYTES) throw new UsageError(`${path} is not the scanner's secret (${bytes.length} bytes, not ${SECRET_BYTES})`, { hint: `Remove it: the scanner makes a new one (its saved owner indexes are then not used)` });
    return bytes;
  };
  try {
    return await read();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      if (err instanceof UsageError) throw err;
      throw new UsageError(`cannot read the scanner's secret ${path}: ${(err as Error).message}`, { hint: 'Remove it: the scanner makes a new one' });
    }
  }
  // Made once, whole or not at all (a kill while it is written leaves no short secret behind).
  const secret = randomBytes(SECRET_BYTES);
  try {
    await writeFileAtomically(path, secret, { exclusive: true });
  } catch (err) {
    // Another scanner process made it meanwhile: its secret is the one.
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return read();
    throw err;
  }
  return secret;
}

/** The save directory made (0700) when missing, and its secret read or made. */
export async function openSavedState(dir: string): Promise<SavedState> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const secret = await secretOf(dir);
  const key = (label: string) => createHmac('sha256', secret).update(label).digest();
  return { file: join(dir, 'owner-indexes.bin'), digestKey: key('virtcbt granule digests'), macKey: key('virtcbt saved owner indexes') };
}

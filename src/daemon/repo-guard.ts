// The boundary for callers on the group socket: virtcbtd runs as root and writes (and, cleaning
// up, deletes) inside the repository it is given, so members of daemon.socketGroup may name only
// repositories under the configured roots. Root, on the root socket, is not limited.
import { realpath } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { UsageError } from '../util/errors.js';

/** The path with every existing component resolved (symlinks followed); missing tail components kept as given. */
async function resolveExisting(path: string): Promise<string> {
  const abs = resolve(path);
  const tail: string[] = [];
  for (let p = abs; ; p = dirname(p)) {
    try {
      return join(await realpath(p), ...tail.reverse());
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || p === '/') throw err;
      tail.push(basename(p));
    }
  }
}

/**
 * Returns the repository's resolved path (the one virtcbtd then uses, so a symlink in the given
 * path cannot be swapped afterwards) if it lies inside one of `roots`, resolved the same way: a
 * symlink inside a root that points out of it is refused like any path outside.
 */
export async function groupRepo(repo: string, roots: readonly string[], domain?: string): Promise<string> {
  if (!repo.startsWith('/')) throw new UsageError('the repository must be an absolute path', { domain });
  const allowedList = roots.length ? roots.join(', ') : 'none configured';
  const hint = roots.length
    ? `Back up into one of them, run the command as root, or have root add the directory to backup.allowedRepoRoots`
    : 'Have root set backup.repo or backup.allowedRepoRoots in the config, or run the command as root';
  const real = await resolveExisting(repo);
  for (const root of roots) {
    const r = await resolveExisting(root);
    if (real === r || real.startsWith(r === '/' ? '/' : `${r}/`)) return real;
  }
  throw new UsageError(
    `repository ${repo}${real !== resolve(repo) ? ` (really ${real})` : ''} is outside the directories members of daemon.socketGroup may use (${allowedList})`,
    { domain, hint },
  );
}

// The hook's spool: event files written by hooks/qemu.d/virtcbt, picked up by inotify while
// the daemon runs and replayed in order when it starts. An event is deleted only after it was
// handled, so a daemon killed mid-event sees it again.
import { watch, type FSWatcher } from 'node:fs';
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';

export interface HookEvent {
  file: string;
  domain: string;
  /** prepare, start, started, stopped, release, migrate, restore, reconnect */
  op: string;
  sub: string;
  extra: string;
  /** Domain XML libvirt passed on stdin (may be empty). */
  xml: string;
}

export function parseEventFile(file: string, text: string): HookEvent {
  const split = text.indexOf('\n\n');
  const head = split < 0 ? text : text.slice(0, split);
  const fields: Record<string, string> = {};
  for (const line of head.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) fields[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return {
    file,
    domain: fields.domain ?? '',
    op: fields.op ?? '',
    sub: fields.sub ?? '',
    extra: fields.extra ?? '',
    xml: split < 0 ? '' : text.slice(split + 2),
  };
}

export class Spool {
  private watcher?: FSWatcher;
  private draining?: Promise<void>;
  private again = false;

  constructor(
    readonly dir: string,
    private readonly handle: (ev: HookEvent) => Promise<void>,
    private readonly onError: (ev: HookEvent | undefined, err: unknown) => void,
  ) {}

  async start(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o750 });
    this.watcher = watch(this.dir, () => void this.drain());
    this.watcher.on('error', (err) => this.onError(undefined, err));
    await this.drain();
  }

  stop(): void {
    this.watcher?.close();
    this.watcher = undefined;
  }

  /** Handles every spooled event in name (time) order; coalesces concurrent calls. */
  drain(): Promise<void> {
    if (this.draining) {
      this.again = true;
      return this.draining;
    }
    this.draining = (async () => {
      do {
        this.again = false;
        const names = (await readdir(this.dir).catch(() => [] as string[])).filter((n) => n.endsWith('.event')).sort();
        for (const name of names) {
          const file = join(this.dir, name);
          let ev: HookEvent | undefined;
          try {
            ev = parseEventFile(file, await readFile(file, 'utf8'));
            await this.handle(ev);
          } catch (err) {
            this.onError(ev, err);
          }
          // A handled or unreadable event is not retried forever: errors are logged above.
          await rm(file, { force: true });
        }
      } while (this.again);
    })().finally(() => {
      this.draining = undefined;
    });
    return this.draining;
  }
}

// Where virtcbtd keeps each domain's quarantine: one JSON file per domain under the state
// directory, written atomically (fsync, rename), read as untrusted input. A file rather than a
// change-log table, because a verdict may be about a domain virtcbt does not track (an external
// scanner's), and `virtcbt disable` deletes a domain's change log but must not lift a quarantine.
import { readdir, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomically } from '../util/atomic-file.js';
import type { QuarantineAction } from '../../config/scan-quarantine.js';
import { QUARANTINE_ACTIONS } from '../../config/scan-quarantine.js';
import { NotRegularFileError, readRegularFile } from '../util/regular-file.js';
import type { InterfaceLinks } from './links.js';
import { parseVerdict, type Verdict } from './verdict.js';

export interface QuarantineEvent {
  at: string;
  /** e.g. "link-down", "suspend", "command", "release", "webhook". */
  what: string;
  ok: boolean;
  detail?: string;
}

export interface QuarantineRecord {
  format: 'virtcbt-quarantine/1';
  domain: string;
  state: 'quarantined' | 'released';
  /** The action of the first verdict (later verdicts' actions are in `events`). */
  action: QuarantineAction;
  since: string;
  /** Every verdict since `since`: an infected file stays reported until the domain is released. */
  verdicts: Verdict[];
  /** link-down: each interface's states before virtcbt took it down (release restores exactly these). */
  linksBefore?: InterfaceLinks[];
  /** suspend: virtcbt paused the running domain (release resumes it). */
  suspended?: boolean;
  events: QuarantineEvent[];
  releasedAt?: string;
}

/** A domain's verdicts stay small; a file bigger than this was not written by virtcbtd. */
const MAX_RECORD_BYTES = 64 * 1024 * 1024;
const MAX_EVENTS = 200;

/** The file is there but not a record virtcbtd wrote: release refuses it, a new verdict sets it aside. */
export class DamagedRecordError extends Error {
  constructor(readonly path: string, reason: string) {
    super(`the quarantine record ${path} cannot be trusted: ${reason}`);
  }
}

export class QuarantineStore {
  readonly dir: string;
  constructor(stateDir: string) {
    this.dir = join(stateDir, 'quarantine');
  }

  path(domain: string): string {
    // encodeURIComponent leaves no '/', so a domain name cannot leave the directory.
    return join(this.dir, `${encodeURIComponent(domain)}.json`);
  }

  /** The domain's record; undefined when it never was quarantined. */
  async read(domain: string): Promise<QuarantineRecord | undefined> {
    const path = this.path(domain);
    let text: string;
    try {
      text = (await readRegularFile(path, MAX_RECORD_BYTES)).text;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      if (err instanceof NotRegularFileError) throw new DamagedRecordError(path, err.what);
      throw err;
    }
    return parseRecord(text, domain, path);
  }

  /** Domains with a record (quarantined or released). */
  async domains(): Promise<string[]> {
    const names = await readdir(this.dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return [] as string[];
      throw err;
    });
    const out: string[] = [];
    for (const n of names) {
      if (n.startsWith('.') || !n.endsWith('.json')) continue;
      try {
        out.push(decodeURIComponent(n.slice(0, -'.json'.length)));
      } catch {
        // not a name this store wrote
      }
    }
    return out.sort();
  }

  async write(rec: QuarantineRecord): Promise<void> {
    const keep: QuarantineRecord = { ...rec, events: rec.events.slice(-MAX_EVENTS) };
    await writeFileAtomically(this.path(rec.domain), JSON.stringify(keep, null, 1));
  }

  /** Moves a damaged record aside (kept for the admin) and returns where it went. */
  async setAside(domain: string): Promise<string> {
    const to = join(this.dir, `.damaged-${encodeURIComponent(domain)}-${Date.now()}.json`);
    await rename(this.path(domain), to);
    return to;
  }
}

const LINK = (v: unknown) => v === undefined || v === 'up' || v === 'down';

function parseRecord(text: string, domain: string, path: string): QuarantineRecord {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new DamagedRecordError(path, `not JSON (${(e as Error).message})`);
  }
  const bad = (why: string) => new DamagedRecordError(path, why);
  const r = v as Partial<QuarantineRecord> | null;
  if (!r || typeof r !== 'object' || r.format !== 'virtcbt-quarantine/1') throw bad('not a virtcbt quarantine record');
  if (r.domain !== domain) throw bad(`it names domain '${String(r.domain)}'`);
  if (r.state !== 'quarantined' && r.state !== 'released') throw bad('no valid state');
  if (!QUARANTINE_ACTIONS.includes(r.action as QuarantineAction)) throw bad('no valid action');
  if (typeof r.since !== 'string' || Number.isNaN(Date.parse(r.since))) throw bad('no valid time');
  if (!Array.isArray(r.verdicts)) throw bad('no verdicts');
  let verdicts: Verdict[];
  try {
    verdicts = r.verdicts.map((x) => parseVerdict(x));
  } catch (e) {
    throw bad(`a verdict is malformed (${(e as Error).message})`);
  }
  if (r.linksBefore !== undefined) {
    if (!Array.isArray(r.linksBefore)) throw bad('linksBefore is not a list');
    for (const l of r.linksBefore) {
      if (!l || typeof l !== 'object' || typeof l.mac !== 'string' || !/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(l.mac) || !LINK(l.live) || !LINK(l.config)) {
        throw bad('an entry of linksBefore is malformed');
      }
    }
  }
  if (r.suspended !== undefined && typeof r.suspended !== 'boolean') throw bad('suspended is not true or false');
  if (!Array.isArray(r.events) || !r.events.every((e) => e && typeof e === 'object' && typeof e.what === 'string' && typeof e.ok === 'boolean' && typeof e.at === 'string')) {
    throw bad('events are malformed');
  }
  if (r.releasedAt !== undefined && typeof r.releasedAt !== 'string') throw bad('releasedAt is malformed');
  return {
    format: r.format, domain, state: r.state, action: r.action as QuarantineAction, since: r.since, verdicts,
    linksBefore: r.linksBefore?.map((l) => ({ mac: l.mac, live: l.live, config: l.config })),
    suspended: r.suspended,
    events: r.events.map((e) => ({ at: e.at, what: e.what, ok: e.ok, detail: typeof e.detail === 'string' ? e.detail : undefined })),
    releasedAt: r.releasedAt,
  };
}

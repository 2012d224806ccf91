// Action on detection: what virtcbt does to a domain a scan (or an external scanner) found
// infected — links down, suspend, shut down, a command, or only record — and release, which
// gives back exactly what was taken. The record (quarantine-store.ts) is written before anything
// is changed, so a crash midway still leaves release knowing the states from before.
import { hostname } from 'node:os';
import { execa } from 'execa';
import type { QuarantineAction, ScanQuarantineConfig } from '../../config/scan-quarantine.js';
import { DomainNotFoundError, virsh, type Libvirt } from '../libvirt/index.js';
import { pollUntil } from '../util/abort.js';
import { NotFoundError, UsageError, VirtcbtError, errorMessage } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { readLinks, setLink, type InterfaceLinks } from './links.js';
import { DamagedRecordError, QuarantineStore, type QuarantineEvent, type QuarantineRecord } from './quarantine-store.js';
import type { Verdict } from './verdict.js';
import { postWebhook } from './webhook.js';

export type { QuarantineAction } from '../../config/scan-quarantine.js';
export type { QuarantineRecord, QuarantineEvent } from './quarantine-store.js';
export type { InfectedFile, Verdict } from './verdict.js';
export { parseVerdict } from './verdict.js';

/** The action for one domain: from scan.domains, else scan.quarantine. */
export interface DomainAction {
  action: QuarantineAction;
  /** For "command": argv (program path first). */
  command?: string[];
}

export interface QuarantineDeps {
  libvirt: Libvirt;
  stateDir: string;
  logger: Logger;
  /** scan.webhook; empty or absent: none. */
  webhook?: string;
  commandTimeoutMs?: number;
  shutdownTimeoutMs?: number;
}

/** The quarantine's action failed (the verdict is recorded; the record says what was done). */
export class QuarantineActionError extends VirtcbtError {}

export function actionFor(cfg: { scan: ScanQuarantineConfig }, domain: string): DomainAction {
  const d = cfg.scan.domains.find((x) => x.domain === domain);
  return d ? { action: d.action, command: d.command } : { action: cfg.scan.quarantine };
}

export function depsFromConfig(cfg: { stateDir: string; scan: ScanQuarantineConfig }, libvirt: Libvirt, logger: Logger): QuarantineDeps {
  return {
    libvirt, logger, stateDir: cfg.stateDir, webhook: cfg.scan.webhook || undefined,
    commandTimeoutMs: cfg.scan.commandTimeoutSeconds * 1000, shutdownTimeoutMs: cfg.scan.shutdownTimeoutSeconds * 1000,
  };
}

// One quarantine or release of a domain at a time: two verdicts arriving together must not both
// read the links as "up before" after the first took them down.
const locks = new Map<string, Promise<unknown>>();
async function exclusive<T>(key: string, fn: () => Promise<T>): Promise<T> {
  const prev = locks.get(key) ?? Promise.resolve();
  const run = prev.catch(() => undefined).then(fn);
  const tail = run.catch(() => undefined);
  locks.set(key, tail);
  try {
    return await run;
  } finally {
    if (locks.get(key) === tail) locks.delete(key);
  }
}

const now = () => new Date().toISOString();

/**
 * Acts on `verdict` for `domain`. A domain already quarantined stays so: the verdict is added to
 * its record and the action applied again (an interface hot-plugged meanwhile goes down too; the
 * states remembered from before the first verdict are kept). Throws NotFoundError for a domain
 * libvirt does not know (nothing is recorded) and QuarantineActionError when the action failed
 * (the verdict is recorded and reported all the same).
 */
export async function quarantine(domain: string, verdict: Verdict, action: DomainAction, deps: QuarantineDeps): Promise<QuarantineRecord> {
  const store = new QuarantineStore(deps.stateDir);
  return exclusive(store.path(domain), async () => {
    await deps.libvirt.state(domain); // DomainNotFoundError before anything is written
    if (action.action === 'command' && !action.command?.length) throw new UsageError(`action "command" for ${domain} needs a command`, { domain, hint: 'Set scan.domains[].command in the config' });
    let rec: QuarantineRecord | undefined;
    const notes: QuarantineEvent[] = [];
    try {
      rec = await store.read(domain);
    } catch (err) {
      if (!(err instanceof DamagedRecordError)) throw err;
      // Quarantine first: the unreadable file is kept aside for the admin, and a new one started.
      const aside = await store.setAside(domain);
      deps.logger.error('quarantine record damaged; set aside, starting a new one', { domain, file: err.path, movedTo: aside, reason: err.message });
      notes.push({ at: now(), what: 'damaged-record', ok: false, detail: `${err.message}; moved to ${aside}: earlier link states in it are not restored by release` });
    }
    const fresh = !rec || rec.state === 'released';
    const r: QuarantineRecord = fresh
      ? { format: 'virtcbt-quarantine/1', domain, state: 'quarantined', action: action.action, since: now(), verdicts: [verdict], events: notes }
      : { ...rec!, verdicts: [...rec!.verdicts, verdict], events: [...rec!.events, ...notes] };
    const event = (what: string, ok: boolean, detail?: string) => r.events.push({ at: now(), what, ok, detail });
    event('verdict', true, `${verdict.infected.length} file(s) from ${verdict.scanner ?? 'an API caller'}`);

    let failure: unknown;
    try {
      switch (action.action) {
        case 'link-down': await linksDown(r, domain, deps, store, event); break;
        case 'suspend': await suspend(r, domain, deps, store, event); break;
        case 'shutdown': await store.write(r); await shutdown(domain, deps, event); break;
        case 'command': await store.write(r); await runCommand(domain, verdict, action.command!, deps, event); break;
        case 'none': event('none', true, 'recorded and reported only (scan.quarantine or scan.domains says none)'); break;
      }
    } catch (err) {
      failure = err;
      event(action.action, false, errorMessage(err));
    }
    await store.write(r);
    const fields = {
      domain, action: action.action, scanner: verdict.scanner, files: verdict.infected.length,
      paths: JSON.stringify(verdict.infected.slice(0, 20).map((f) => f.path)),
      signatures: [...new Set(verdict.infected.map((f) => f.signature))].join(','),
    };
    if (failure) deps.logger.error('malware found; quarantine action failed', { ...fields, error: errorMessage(failure) });
    else deps.logger.warn(fresh ? 'malware found: domain quarantined' : 'malware found again: domain stays quarantined', fields);
    if (deps.webhook) {
      void postWebhook(deps.webhook, { event: 'quarantine', host: hostname(), domain, action: action.action, ok: !failure, error: failure ? errorMessage(failure) : undefined, quarantinedSince: r.since, verdict }, deps.logger, { domain });
    }
    if (failure) {
      throw new QuarantineActionError(`malware found; the verdict is recorded but action ${action.action} failed: ${errorMessage(failure)}`, {
        domain, cause: failure, hint: 'Isolate the domain by hand (virsh domif-setlink / suspend); `virtcbt quarantine status` shows the verdict',
      });
    }
    return r;
  });
}

type Note = (what: string, ok: boolean, detail?: string) => void;

async function linksDown(r: QuarantineRecord, domain: string, deps: QuarantineDeps, store: QuarantineStore, event: Note): Promise<void> {
  const links = await readLinks(deps.libvirt, domain);
  const known = new Map((r.linksBefore ?? []).map((l) => [l.mac, l]));
  // Remember what is new; what the first verdict saw stays as it was then.
  for (const l of links.interfaces) if (!known.has(l.mac)) known.set(l.mac, l);
  r.linksBefore = [...known.values()];
  await store.write(r);
  const errors: string[] = [];
  let changed = 0;
  for (const l of links.interfaces) {
    for (const where of ['live', 'config'] as const) {
      if (l[where] !== 'up') continue;
      try {
        await setLink(deps.libvirt, domain, l.mac, 'down', where);
        changed++;
      } catch (err) {
        errors.push(`${l.mac} (${where}): ${errorMessage(err)}`);
      }
    }
  }
  if (errors.length) throw new VirtcbtError(`could not take down ${errors.join('; ')}`, { domain });
  event('link-down', true, links.interfaces.length === 0 ? 'the domain has no network interface' : `${links.interfaces.length} interface(s), ${changed} link(s) taken down (live and persistent)`);
}

async function suspend(r: QuarantineRecord, domain: string, deps: QuarantineDeps, store: QuarantineStore, event: Note): Promise<void> {
  const state = await deps.libvirt.state(domain);
  if (state !== 'running' && state !== 'idle') {
    event('suspend', true, `domain is ${state}: nothing to suspend${r.suspended ? ' (virtcbt suspended it earlier)' : ''}`);
    await store.write(r);
    return;
  }
  // Intent first: if virtcbtd dies right after the suspend, release still resumes.
  r.suspended = true;
  await store.write(r);
  await deps.libvirt.suspend(domain);
  event('suspend', true, 'domain paused (a restart of the domain ends the pause: use link-down to survive one)');
}

async function shutdown(domain: string, deps: QuarantineDeps, event: Note): Promise<void> {
  const uri = deps.libvirt.uri;
  if (!(await deps.libvirt.isActive(domain))) {
    event('shutdown', true, 'domain was not running');
    return;
  }
  const timeoutMs = deps.shutdownTimeoutMs ?? 120_000;
  await virsh(['shutdown', domain], { uri, domain }).catch((err) => event('shutdown', false, `graceful shutdown refused: ${errorMessage(err)}`));
  try {
    await pollUntil(async () => !(await deps.libvirt.isActive(domain)), `${domain} to shut down`, { timeoutMs, intervalMs: 500 });
    event('shutdown', true, 'guest shut down');
  } catch {
    // The guest ignored ACPI (or is too busy to act on it): an infected guest must not keep running.
    await virsh(['destroy', domain], { uri, domain });
    event('shutdown', true, `guest did not shut down within ${timeoutMs / 1000} s: forced off (virsh destroy)`);
  }
}

async function runCommand(domain: string, verdict: Verdict, command: string[], deps: QuarantineDeps, event: Note): Promise<void> {
  const timeout = deps.commandTimeoutMs ?? 60_000;
  // argv only: paths come from the guest's filesystem and must never reach a shell.
  const r = await execa(command[0]!, [...command.slice(1), domain, ...verdict.infected.map((f) => f.path)], {
    shell: false,
    reject: false,
    timeout,
    input: JSON.stringify({ domain, verdict }),
    env: {
      VIRTCBT_DOMAIN: domain,
      VIRTCBT_VERDICT: JSON.stringify(verdict),
      VIRTCBT_SIGNATURES: verdict.infected.map((f) => f.signature).join('\n'),
    },
    stripFinalNewline: true,
    maxBuffer: 1 << 20,
  });
  const tail = (r.stderr || r.stdout || '').toString().slice(-500);
  if (r.timedOut) throw new VirtcbtError(`${command[0]} did not finish within ${timeout / 1000} s and was killed`, { domain });
  if (r.exitCode !== 0) throw new VirtcbtError(`${command[0]} exited ${r.exitCode ?? r.signal}${tail ? `: ${tail}` : ''}`, { domain });
  event('command', true, `${command[0]} exited 0${tail ? `: ${tail}` : ''}`);
}

/**
 * Lifts the quarantine: every link back to exactly its state before the first verdict (live and
 * persistent; an interface that was down stays down), a domain virtcbt suspended resumed, and the
 * release recorded. A domain that was shut down is not started: that is the admin's call. On a
 * failure the domain stays quarantined, so release can be run again.
 */
export async function release(domain: string, deps: QuarantineDeps): Promise<QuarantineRecord> {
  const store = new QuarantineStore(deps.stateDir);
  return exclusive(store.path(domain), async () => {
    let rec: QuarantineRecord | undefined;
    try {
      rec = await store.read(domain);
    } catch (err) {
      if (!(err instanceof DamagedRecordError)) throw err;
      throw new VirtcbtError(err.message, { domain, cause: err, hint: `Restore the links by hand (virsh domif-setlink ${domain} MAC up [--config]), then remove ${err.path}` });
    }
    if (!rec || rec.state !== 'quarantined') {
      throw new NotFoundError(`${domain} is not quarantined`, { domain, hint: 'See `virtcbt quarantine status`' });
    }
    const r = rec;
    const event = (what: string, ok: boolean, detail?: string) => r.events.push({ at: now(), what, ok, detail });
    const errors: string[] = [];
    let exists = true;
    try {
      await deps.libvirt.state(domain);
    } catch (err) {
      if (!(err instanceof DomainNotFoundError)) throw err;
      exists = false;
      event('release', true, 'the domain no longer exists: nothing to restore');
    }
    if (exists && r.linksBefore?.length) errors.push(...(await restoreLinks(domain, r.linksBefore, deps, event)));
    if (exists && r.suspended && (await deps.libvirt.state(domain)) === 'paused') {
      try {
        await deps.libvirt.resume(domain);
        event('resume', true);
      } catch (err) {
        errors.push(`resume: ${errorMessage(err)}`);
      }
    }
    if (errors.length) {
      event('release', false, errors.join('; '));
      await store.write(r);
      throw new VirtcbtError(`release incomplete, the domain stays quarantined: ${errors.join('; ')}`, { domain, hint: 'Fix the cause and run `virtcbt quarantine release` again' });
    }
    r.state = 'released';
    r.releasedAt = now();
    event('release', true);
    await store.write(r);
    deps.logger.info('quarantine released', { domain, since: r.since, verdicts: r.verdicts.length });
    if (deps.webhook) void postWebhook(deps.webhook, { event: 'release', host: hostname(), domain, quarantinedSince: r.since, releasedAt: r.releasedAt }, deps.logger, { domain });
    return r;
  });
}

async function restoreLinks(domain: string, before: InterfaceLinks[], deps: QuarantineDeps, event: Note): Promise<string[]> {
  const now = await readLinks(deps.libvirt, domain);
  const current = new Map(now.interfaces.map((l) => [l.mac, l]));
  const errors: string[] = [];
  for (const b of before) {
    const c = current.get(b.mac);
    if (!c) {
      event('link-restore', true, `${b.mac} is gone from the domain: skipped`);
      continue;
    }
    // A domain started since the quarantine has live links from its definition: they get the
    // state the interface had before, live if it was running then, else the persistent one.
    const targets = { live: b.live ?? b.config, config: b.config };
    for (const where of ['live', 'config'] as const) {
      const want = targets[where];
      if (want === undefined || c[where] === undefined || c[where] === want) continue;
      try {
        await setLink(deps.libvirt, domain, b.mac, want, where);
      } catch (err) {
        errors.push(`${b.mac} (${where}) ${want}: ${errorMessage(err)}`);
      }
    }
  }
  if (!errors.length) event('link-restore', true, before.map((b) => `${b.mac} live=${b.live ?? '-'} config=${b.config ?? '-'}`).join(', '));
  return errors;
}

export interface QuarantineStatus {
  domain: string;
  state: 'quarantined' | 'released' | 'clean';
  record?: QuarantineRecord;
  /** The record could not be read (damaged): the domain is treated as quarantined. */
  problem?: string;
}

/** One domain's quarantine as the status command shows it. */
export async function quarantineStatus(domain: string, stateDir: string): Promise<QuarantineStatus> {
  try {
    const record = await new QuarantineStore(stateDir).read(domain);
    return record ? { domain, state: record.state, record } : { domain, state: 'clean' };
  } catch (err) {
    if (err instanceof DamagedRecordError) return { domain, state: 'quarantined', problem: err.message };
    throw err;
  }
}

/** Every domain with a quarantine record. */
export async function quarantineStatusAll(stateDir: string): Promise<QuarantineStatus[]> {
  const domains = await new QuarantineStore(stateDir).domains();
  return Promise.all(domains.map((d) => quarantineStatus(d, stateDir)));
}

/**
 * The infected files reported for `domain` since its quarantine began: a file stays reported until
 * the domain is released, whatever later scans say. Empty for a domain not quarantined.
 */
export async function reportedInfected(domain: string, stateDir: string): Promise<Verdict['infected']> {
  const s = await quarantineStatus(domain, stateDir);
  return s.state === 'quarantined' && s.record ? s.record.verdicts.flatMap((v) => v.infected) : [];
}

// The control API's routes: each maps one CLI command onto the tracker.
import { UsageError } from '../util/errors.js';
import type { EnableRequest, StatusReply } from './api-types.js';
import type { ControlServer, Handler } from './control-server.js';
import type { JobRunner } from './jobs.js';
import type { Tracker } from './tracker.js';
import { groupRepo } from './repo-guard.js';
import { parseVerdict, quarantine, quarantineStatus, quarantineStatusAll, release, type DomainAction, type QuarantineDeps } from '../scan/quarantine.js';

function str(v: unknown, name: string): string {
  if (typeof v !== 'string' || v === '') throw new UsageError(`${name} is required`);
  return v;
}

/** Absent is allowed (an API caller that names only the pass); anything else must be a name. */
function optStr(v: unknown, name: string): string | undefined {
  return v === undefined ? undefined : str(v, name);
}

/** Client identities (subject DNs) for exports to another host: absent, or a list of non-empty strings. */
function identities(v: unknown): string[] | undefined {
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string' && x.trim() !== '')) throw new UsageError('exportTo must be a list of client identities (subject DNs, e.g. "CN=scanner")');
  return v as string[];
}

function passId(v: string): number {
  const id = Number(v);
  if (!Number.isInteger(id) || id <= 0) throw new UsageError(`pass id '${v}' is not a positive integer`);
  return id;
}

/**
 * Routes that change what virtcbt tracks or where a consumer stands (enable, disable, consumers,
 * passes) answer only root's socket: a group member who could commit another consumer's pass would
 * make that consumer's next backup skip changes. The group may read, fold and back up (under
 * backup.allowedRepoRoots: see repo-guard.ts).
 */
function rootOnly(what: string, handler: Handler): Handler {
  return async (r) => {
    if (r.caller !== 'root') {
      throw new UsageError(`${what} needs root: members of daemon.socketGroup may read status and changes, fold and back up, nothing else`, {
        domain: r.params.domain, hint: `Run \`virtcbt ${what}\` as root; nothing was changed`,
      });
    }
    return handler(r);
  };
}

export interface RouteOptions {
  /** Where callers on the group socket may back up (see repo-guard.ts). */
  groupRepoRoots?: readonly string[];
  /** Quarantine on detection (src/scan/quarantine.ts): its dependencies and each domain's configured action. */
  quarantine?: { deps: QuarantineDeps; actionFor(domain: string): DomainAction };
}

export function registerRoutes(server: ControlServer, t: Tracker, daemon: StatusReply['daemon'], jobs?: JobRunner, opts: RouteOptions = {}): void {
  server
    .route('GET', '/v1/status', async () => ({ daemon, libvirt: await t.libvirtStatus(), domains: await t.statusAll() }))
    .route('GET', '/v1/domains/:domain', async (r) => t.status(r.params.domain))
    .route('POST', '/v1/domains/:domain/enable', rootOnly('enable', async (r) => t.enable(r.params.domain, r.body as EnableRequest)))
    .route('POST', '/v1/domains/:domain/disable', rootOnly('disable', async (r) => t.disable(r.params.domain)))
    .route('POST', '/v1/domains/:domain/reconcile', async (r) => t.reconcile(r.params.domain))
    .route('GET', '/v1/domains/:domain/consumers', async (r) => t.listConsumers(r.params.domain))
    .route('POST', '/v1/domains/:domain/consumers', rootOnly('consumer add', async (r) => t.addConsumer(r.params.domain, str(r.body.name, 'name'))))
    .route('DELETE', '/v1/domains/:domain/consumers/:name', rootOnly('consumer remove', async (r) => t.removeConsumer(r.params.domain, r.params.name)))
    .route('GET', '/v1/domains/:domain/changes', async (r) => t.changes(r.params.domain, str(r.query.get('consumer'), 'consumer')))
    .route('POST', '/v1/domains/:domain/passes', rootOnly('pass begin', async (r) => (r.body.export === true && jobs
      ? jobs.beginPassExport(r.params.domain, str(r.body.consumer, 'consumer'), { exportTo: identities(r.body.exportTo) })
      : t.beginPass(r.params.domain, str(r.body.consumer, 'consumer')))))
    .route('POST', '/v1/domains/:domain/passes/:id/commit', rootOnly('pass commit', async (r) => (jobs
      ? jobs.endPass(r.params.domain, passId(r.params.id), 'commit', optStr(r.body.consumer, 'consumer'))
      : t.commitPass(r.params.domain, passId(r.params.id), optStr(r.body.consumer, 'consumer')))))
    .route('POST', '/v1/domains/:domain/passes/:id/abort', rootOnly('pass abort', async (r) => (jobs
      ? jobs.endPass(r.params.domain, passId(r.params.id), 'abort', optStr(r.body.consumer, 'consumer'))
      : t.abortPass(r.params.domain, passId(r.params.id), optStr(r.body.consumer, 'consumer')))));
  const q = opts.quarantine;
  if (q) {
    // Status is reading (the group may, like `status`); reporting a verdict acts on the domain and
    // release lifts an isolation: root only. POST .../quarantine is what `virtcbt scan` does on
    // detection, open to external scanners too; an action in the body (not "command": commands
    // come only from the config) overrides the configured one.
    server
      .route('GET', '/v1/quarantine', async () => ({ domains: await quarantineStatusAll(q.deps.stateDir) }))
      .route('GET', '/v1/domains/:domain/quarantine', async (r) => quarantineStatus(r.params.domain, q.deps.stateDir))
      .route('POST', '/v1/domains/:domain/quarantine', rootOnly('quarantine report', async (r) => {
        const verdict = parseVerdict(r.body);
        const override = oneOf(r.body.action, ['link-down', 'suspend', 'shutdown', 'none'] as const, 'action');
        return quarantine(r.params.domain, verdict, override ? { action: override } : q.actionFor(r.params.domain), q.deps);
      }))
      .route('POST', '/v1/domains/:domain/quarantine/release', rootOnly('quarantine release', async (r) => release(r.params.domain, q.deps)));
  }
  if (jobs) {
    // Listing is reading, like status: the group may. Cancelling ends another caller's work (a
    // scheduled backup, a tool's pass export): root only, like enable and disable.
    server
      .route('GET', '/v1/jobs', async () => ({ jobs: jobs.registry.list() }))
      .route('GET', '/v1/jobs/:id', async (r) => jobs.registry.get(r.params.id))
      .route('POST', '/v1/jobs/:id/cancel', rootOnly('jobs cancel', async (r) => jobs.registry.cancel(r.params.id, 'virtcbt jobs cancel')));
    server.route('POST', '/v1/domains/:domain/backups', async (r) => ({
      stream: jobs.backupStream(r.params.domain, {
        consumer: str(r.body.consumer, 'consumer'),
        repo: r.caller === 'root' ? str(r.body.repo, 'repo') : await groupRepo(str(r.body.repo, 'repo'), opts.groupRepoRoots ?? [], r.params.domain),
        full: r.body.full === true,
        noFreeze: r.body.noFreeze === true,
      }),
    }));
    // What the sync targets and scans are and how far behind: read-only, like status.
    server
      .route('GET', '/v1/syncs', async () => ({ targets: await jobs.syncStatus() }))
      .route('GET', '/v1/domains/:domain/syncs', async (r) => ({ targets: await jobs.syncStatus(r.params.domain) }))
      .route('GET', '/v1/scans', async () => ({ scans: await jobs.scanStatus() }))
      .route('GET', '/v1/domains/:domain/scans', async (r) => ({ scans: await jobs.scanStatus(r.params.domain) }));
    // A sync writes wherever its target is, and a used map freezes the guest: root only.
    server.route('POST', '/v1/domains/:domain/syncs', rootOnly('sync', async (r) => ({
      stream: jobs.syncStream(r.params.domain, {
        disk: str(r.body.disk, 'disk'),
        to: str(r.body.to, 'to'),
        format: oneOf(r.body.format, ['qcow2', 'raw'] as const, 'format'),
        discard: r.body.discard === true,
        full: r.body.full === true,
        noFreeze: r.body.noFreeze === true,
        map: oneOf(r.body.map, ['image', 'agent'] as const, 'map'),
      }),
    })));
    server.route('POST', '/v1/domains/:domain/scans', rootOnly('scan', async (r) => ({
      stream: jobs.scanStream(r.params.domain, { scanner: optStr(r.body.scanner, 'scanner'), full: r.body.full === true, noFreeze: r.body.noFreeze === true }),
    })));
    server.route('POST', '/v1/domains/:domain/usedmap', rootOnly('usedmap', async (r) =>
      jobs.usedMap(r.params.domain, str(r.body.disk, 'disk'), oneOf(r.body.map, ['image', 'agent'] as const, 'map'))));
  }
}

/** An optional value from a fixed set. */
function oneOf<T extends string>(v: unknown, allowed: readonly T[], name: string): T | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) throw new UsageError(`${name} must be one of ${allowed.join(', ')}`);
  return v as T;
}

// The control API's routes: each maps one CLI command onto the tracker.
import { UsageError } from '../util/errors.js';
import type { EnableRequest, StatusReply } from './api-types.js';
import type { ControlServer } from './control-server.js';
import type { JobRunner } from './jobs.js';
import type { Tracker } from './tracker.js';
import { groupRepo } from './repo-guard.js';

function str(v: unknown, name: string): string {
  if (typeof v !== 'string' || v === '') throw new UsageError(`${name} is required`);
  return v;
}

/** Absent is allowed (an API caller that names only the pass); anything else must be a name. */
function optStr(v: unknown, name: string): string | undefined {
  return v === undefined ? undefined : str(v, name);
}

function passId(v: string): number {
  const id = Number(v);
  if (!Number.isInteger(id) || id <= 0) throw new UsageError(`pass id '${v}' is not a positive integer`);
  return id;
}

export interface RouteOptions {
  /** Where callers on the group socket may back up (see repo-guard.ts). */
  groupRepoRoots?: readonly string[];
}

export function registerRoutes(server: ControlServer, t: Tracker, daemon: StatusReply['daemon'], jobs?: JobRunner, opts: RouteOptions = {}): void {
  server
    .route('GET', '/v1/status', async () => ({ daemon, libvirt: await t.libvirtStatus(), domains: await t.statusAll() }))
    .route('GET', '/v1/domains/:domain', async (r) => t.status(r.params.domain))
    .route('POST', '/v1/domains/:domain/enable', async (r) => t.enable(r.params.domain, r.body as EnableRequest))
    .route('POST', '/v1/domains/:domain/disable', async (r) => t.disable(r.params.domain))
    .route('POST', '/v1/domains/:domain/reconcile', async (r) => t.reconcile(r.params.domain))
    .route('GET', '/v1/domains/:domain/consumers', async (r) => t.listConsumers(r.params.domain))
    .route('POST', '/v1/domains/:domain/consumers', async (r) => t.addConsumer(r.params.domain, str(r.body.name, 'name')))
    .route('DELETE', '/v1/domains/:domain/consumers/:name', async (r) => t.removeConsumer(r.params.domain, r.params.name))
    .route('GET', '/v1/domains/:domain/changes', async (r) => t.changes(r.params.domain, str(r.query.get('consumer'), 'consumer')))
    .route('POST', '/v1/domains/:domain/passes', async (r) => (r.body.export === true && jobs
      ? jobs.beginPassExport(r.params.domain, str(r.body.consumer, 'consumer'))
      : t.beginPass(r.params.domain, str(r.body.consumer, 'consumer'))))
    .route('POST', '/v1/domains/:domain/passes/:id/commit', async (r) => (jobs
      ? jobs.endPass(r.params.domain, passId(r.params.id), 'commit', optStr(r.body.consumer, 'consumer'))
      : t.commitPass(r.params.domain, passId(r.params.id), optStr(r.body.consumer, 'consumer'))))
    .route('POST', '/v1/domains/:domain/passes/:id/abort', async (r) => (jobs
      ? jobs.endPass(r.params.domain, passId(r.params.id), 'abort', optStr(r.body.consumer, 'consumer'))
      : t.abortPass(r.params.domain, passId(r.params.id), optStr(r.body.consumer, 'consumer'))));
  if (jobs) {
    server.route('POST', '/v1/domains/:domain/backups', async (r) => ({
      stream: jobs.backupStream(r.params.domain, {
        consumer: str(r.body.consumer, 'consumer'),
        repo: r.caller === 'root' ? str(r.body.repo, 'repo') : await groupRepo(str(r.body.repo, 'repo'), opts.groupRepoRoots ?? [], r.params.domain),
        full: r.body.full === true,
        noFreeze: r.body.noFreeze === true,
      }),
    }));
  }
}

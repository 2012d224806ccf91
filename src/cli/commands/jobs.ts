// `virtcbt jobs`: what virtcbtd is doing (backups, pass exports) and what it did lately; `jobs cancel` stops one.
import type { JobInfo } from '../../daemon/job-registry.js';
import { UsageError } from '../../util/errors.js';
import { parse, positional } from '../args.js';
import { EXIT, type Command } from '../command.js';
import { callDaemon, daemonSocket } from '../daemon-client.js';
import { emit, formatBytes } from '../output.js';
import { formatMs } from './backup.js';

function progressText(j: JobInfo): string {
  const p = j.progress;
  if (p.total !== undefined && p.total > 0 && p.done !== undefined) {
    return `${p.step ?? ''} ${Math.min(100, Math.floor((p.done / p.total) * 100))}% ${formatBytes(p.done)}/${formatBytes(p.total)}`.trim();
  }
  return p.step ?? '-';
}

function clock(iso: string): string {
  return new Date(iso).toTimeString().slice(0, 8);
}

/** Running time so far (or in all, once ended); a queued job's wait. */
function elapsed(j: JobInfo, now: number): string {
  const from = Date.parse(j.startedAt ?? j.queuedAt);
  const to = j.endedAt ? Date.parse(j.endedAt) : now;
  return formatMs(Math.max(0, to - from));
}

export function jobTable(jobs: JobInfo[], now = Date.now()): string[] {
  if (jobs.length === 0) return ['no jobs'];
  const rows = [['ID', 'KIND', 'DOMAIN', 'CONSUMER', 'STATE', 'PROGRESS', 'STARTED', 'ELAPSED'],
    ...jobs.map((j) => [j.id, j.kind, j.domain, j.consumer ?? '-', j.state, progressText(j), clock(j.startedAt ?? j.queuedAt), elapsed(j, now)])];
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  '));
}

export const jobsCommand: Command = {
  usage: `usage: virtcbt jobs [--json]
       virtcbt jobs cancel ID [--json]

Lists the jobs virtcbtd runs (backups, pass exports) and those that ended in the last 10
minutes: id, kind, domain, consumer, state (queued, running, cancelling, done, failed,
cancelled), progress, start time and how long it has run. Members of daemon.socketGroup may list.

cancel stops job ID (as root) and waits until it has ended: a cancelled backup aborts its pass
(the consumer does not move: its next backup covers everything since its last good one),
releases its snapshot (the guest is thawed, no fleecing is left in QEMU) and removes its partial
files. Exit code 0 when the job ended cancelled, 1 when it ended otherwise before the cancel took
effect (its state says how), 4 when virtcbtd knows no job ID.`,
  async run(ctx) {
    const { values, positionals } = parse(ctx.argv, { json: { type: 'boolean' } }, this.usage);
    const json = Boolean(values.json);
    const api = daemonSocket(ctx.config());
    const [verb] = positionals;
    if (verb === undefined) {
      const r = await callDaemon<{ jobs: JobInfo[] }>(api, 'GET', '/v1/jobs');
      emit(ctx.io, json, r, () => jobTable(r.jobs));
      return EXIT.OK;
    }
    if (verb === 'cancel') {
      if (positionals.length > 2) throw new UsageError(`jobs cancel takes one ID\n\n${this.usage}`);
      const id = positional(positionals, 1, 'ID', this.usage);
      const j = await callDaemon<JobInfo>(api, 'POST', `/v1/jobs/${encodeURIComponent(id)}/cancel`);
      const what = `${j.id}: ${j.kind} of ${j.domain}${j.consumer ? ` for ${j.consumer}` : ''}`;
      emit(ctx.io, json, j, () => [j.state === 'cancelled' ? `${what} cancelled`
        : `${what} had ended ${j.state} before the cancel took effect${j.error ? ` (${j.error})` : ''}`]);
      return j.state === 'cancelled' ? EXIT.OK : EXIT.FAILED;
    }
    throw new UsageError(`unknown jobs action '${verb}'\n\n${this.usage}`);
  },
};

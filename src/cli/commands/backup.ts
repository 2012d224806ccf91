// `virtcbt backup`: asks virtcbtd (which owns QMP) to back a domain up for a consumer, renders its
// progress events, then prints a summary; with --keep, prunes the chain afterwards.
import { resolve } from 'node:path';
import type { BackupEvent, BackupResult } from '../../backup/index.js';
import { UsageError, VirtcbtError, errorMessage } from '../../util/errors.js';
import { domainArg, parse } from '../args.js';
import { EXIT, type Command, type CommandContext } from '../command.js';
import { callDaemon, daemonSocket } from '../daemon-client.js';
import { formatBytes } from '../output.js';

/** The repository from --repo or the config's backup.repo, made absolute (the daemon has another cwd). */
export function repoArg(ctx: CommandContext, value: string | undefined, usage: string): string {
  const r = value ?? ctx.config().backup.repo;
  if (!r) throw new UsageError(`--repo DIR is required (or set backup.repo in the config)\n\n${usage}`);
  return resolve(r);
}

export function formatMs(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
}

function formatEta(s: number | null): string {
  if (s === null) return '--';
  if (s < 60) return `${Math.ceil(s)}s`;
  return `${Math.floor(s / 60)}m${String(Math.ceil(s % 60)).padStart(2, '0')}s`;
}

/** One line per disk, redrawn in place on a terminal. */
class TtyProgress {
  private lines = new Map<string, string>();
  private drawn = 0;

  update(disk: string, line: string): void {
    this.lines.set(disk, line);
    this.draw();
  }

  private draw(): void {
    let out = this.drawn > 0 ? `\x1b[${this.drawn}A` : '';
    for (const l of this.lines.values()) out += `\r\x1b[2K${l}\n`;
    this.drawn = this.lines.size;
    process.stderr.write(out);
  }
}

export function summary(r: BackupResult): string[] {
  const lines = [
    `${r.id}: ${r.kind} backup of ${r.domain} for ${r.consumer}${r.parent ? ` (on top of ${r.parent})` : ''}, generation ${r.generation}, pass ${r.pass}`,
  ];
  for (const d of r.disks) {
    lines.push(`  ${d.target}  ${d.full ? `full${d.reason ? ` (${d.reason})` : ''}` : 'incremental'}: ${formatBytes(d.bytes)} in ${d.extents} extent${d.extents === 1 ? '' : 's'}, ` +
      `${formatBytes(d.written)} written, ${formatMs(d.elapsedMs)}, sha256 ${d.sha256.slice(0, 16)}…`);
  }
  lines.push(r.consistency === 'filesystem'
    ? `  filesystem-consistent${r.freezeWindowMs !== null ? `: guest filesystems frozen for ${formatMs(r.freezeWindowMs)}` : ''}`
    : `  crash-consistent: ${r.consistencyNote ?? 'no freeze'}`);
  for (const n of r.notes) if (n !== r.consistencyNote) lines.push(`  note: ${n}`);
  lines.push(`  ${formatMs(r.elapsedMs)} in all (${r.steps.map((s) => `${s.step} ${formatMs(s.ms)}`).join(', ')}); manifest ${r.manifest}`);
  return lines;
}

interface OneBackup {
  domain: string;
  consumer: string;
  repo: string;
  full: boolean;
  noFreeze: boolean;
  keep?: number;
  json: boolean;
}

async function backupOne(ctx: CommandContext, o: OneBackup): Promise<BackupResult> {
  const tty = ctx.io.isTty && !o.json ? new TtyProgress() : undefined;
  const result = await callDaemon<BackupEvent>(daemonSocket(ctx.config()), 'POST', `/v1/domains/${encodeURIComponent(o.domain)}/backups`, {
    body: { consumer: o.consumer, repo: o.repo, full: o.full, noFreeze: o.noFreeze },
    onEvent: (raw) => {
      const ev = raw as unknown as BackupEvent;
      if (o.json) {
        ctx.io.out(JSON.stringify(ev));
        return;
      }
      if (!tty) return;
      if (ev.type === 'progress') {
        const pct = ev.total > 0 ? Math.min(100, (ev.done / ev.total) * 100) : 100;
        tty.update(ev.disk, `${ev.disk}  ${pct.toFixed(0).padStart(3)}%  ${formatBytes(ev.done)} / ${formatBytes(ev.total)}  ` +
          `${formatBytes(ev.bytesPerSec)}/s  ETA ${formatEta(ev.etaSec)}`);
      } else if (ev.type === 'snapshot') {
        ctx.io.err(ev.consistency === 'filesystem'
          ? `snapshot taken (guest frozen ${ev.freezeWindowMs === null ? '-' : formatMs(ev.freezeWindowMs)}), pass ${ev.pass}`
          : `snapshot taken, crash-consistent: ${ev.note ?? ''}`);
      }
    },
  });
  if (result.type !== 'result') throw new UsageError('virtcbtd ended the backup without a result');
  if (!o.json) for (const l of summary(result)) ctx.io.out(l);
  if (o.keep !== undefined) {
    // Loaded only when needed: the repository room pulls in execa, which costs the CLI ~250 ms to start.
    const { Repository, pruneChain } = await import('../../repo/index.js');
    const p = await pruneChain(await Repository.open(o.repo), o.domain, o.consumer, o.keep);
    if (o.json) ctx.io.out(JSON.stringify({ type: 'prune', ...p }));
    else ctx.io.out(`pruned: removed ${p.removed.length} restore point(s)${p.removed.length ? ` (${p.removed.join(', ')})` : ''}${p.mergedInto ? `, merged into ${p.mergedInto}` : ''}`);
  }
  return result;
}

export const backupCommand: Command = {
  usage: `usage: virtcbt backup DOMAIN --consumer NAME [--repo DIR] [--full] [--no-freeze] [--keep N] [--json]
       virtcbt backup --job NAME [--json]

Takes a point-in-time backup without pausing the guest: its filesystems are frozen through the
guest agent (when it has one) only for the instant the snapshot is taken. A consumer's first
backup is full; later ones copy only what changed since its last backup. The consumer moves on
only once the data and the manifest are on disk.
  --repo DIR   repository (default: backup.repo from the config)
  --full       copy every disk whole and start a new chain
  --no-freeze  do not freeze the guest's filesystems (crash-consistent backup)
  --keep N     afterwards, keep only the newest N restore points of this consumer (prune)
  --job NAME   run the backup job NAME from the config (backup.jobs): each of its domains, then
               prune to its keep; what the systemd timers installed by \`virtcbt install\` run
  --json       JSON lines: every progress event, the result last`,
  async run(ctx) {
    const { values, positionals } = parse(ctx.argv, {
      consumer: { type: 'string' },
      repo: { type: 'string' },
      full: { type: 'boolean' },
      'no-freeze': { type: 'boolean' },
      keep: { type: 'string' },
      job: { type: 'string' },
      json: { type: 'boolean' },
    }, this.usage);
    const json = Boolean(values.json);
    if (values.job !== undefined) {
      if (positionals.length > 0 || values.consumer || values.repo || values.keep) {
        throw new UsageError(`--job takes the domains, consumer, repository and keep from the config: give no others\n\n${this.usage}`);
      }
      const job = ctx.config().backup.jobs.find((j) => j.name === values.job);
      if (!job) throw new UsageError(`no backup job '${values.job}' in the config (backup.jobs has ${ctx.config().backup.jobs.map((j) => j.name).join(', ') || 'none'})`);
      const repo = repoArg(ctx, job.repo, this.usage);
      const failed: string[] = [];
      for (const domain of job.domains) {
        try {
          await backupOne(ctx, { domain, consumer: job.consumer, repo, full: Boolean(values.full), noFreeze: Boolean(values['no-freeze']), keep: job.keep || undefined, json });
        } catch (err) {
          // One domain's failure must not cost the others their backup.
          ctx.io.err(`virtcbt backup: ${domain}: ${errorMessage(err)}`);
          failed.push(domain);
        }
      }
      if (failed.length > 0) throw new VirtcbtError(`backup job ${job.name}: ${failed.length} of ${job.domains.length} domains failed (${failed.join(', ')})`);
      return EXIT.OK;
    }
    const domain = domainArg(positionals, this.usage);
    if (!values.consumer) throw new UsageError(`--consumer is required\n\n${this.usage}`);
    const keep = values.keep === undefined ? undefined : Number(values.keep);
    if (keep !== undefined && (!Number.isInteger(keep) || keep < 1)) throw new UsageError(`--keep must be a whole number of at least 1\n\n${this.usage}`);
    await backupOne(ctx, {
      domain, consumer: values.consumer, repo: repoArg(ctx, values.repo, this.usage), full: Boolean(values.full),
      noFreeze: Boolean(values['no-freeze']), keep, json,
    });
    return EXIT.OK;
  },
};

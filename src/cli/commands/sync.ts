// `virtcbt sync` and `virtcbt usedmap`: ask virtcbtd to bring a second copy of a disk up to date
// with only the blocks modified since its last sync and in use now, to say where each target
// stands (`sync status`), and to show the used-block map such a sync would use; progress on a
// terminal, JSON lines for scripts.
import { resolve } from 'node:path';
import type { SyncEvent, SyncResult, SyncTargetStatus } from '../../sync/index.js';
import type { UsedMap } from '../../usedmap/index.js';
import { UsageError, VirtcbtError, errorMessage } from '../../util/errors.js';
import { domainArg, parse } from '../args.js';
import { EXIT, type Command, type CommandContext } from '../command.js';
import { callDaemon, daemonSocket } from '../daemon-client.js';
import { emit, formatBytes } from '../output.js';
import { formatMs } from './backup.js';
import { statusListing } from './status-listing.js';

/** A path target is made absolute here (virtcbtd has another working directory); URIs stay. */
function targetArg(to: string): string {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(to) ? to : resolve(to);
}

function mapArg(v: string | undefined, usage: string): 'image' | 'agent' | undefined {
  if (v === undefined) return undefined;
  if (v !== 'image' && v !== 'agent') throw new UsageError(`--map must be image or agent\n\n${usage}`);
  return v;
}

export function syncSummary(r: SyncResult): string[] {
  const lines = [
    `${r.domain} ${r.disk} → ${r.target}: ${r.seed ? `seeded (${r.reason})` : 'incremental'}, ${formatBytes(r.copiedBytes)} copied in ${formatMs(r.elapsedMs)}`,
    `  modified since the last sync ${formatBytes(r.modifiedBytes)}, of which in use ${formatBytes(r.modifiedUsedBytes)}; skipped because free ${formatBytes(r.skippedFreeBytes)}` +
      `${r.discardedBytes > 0 ? `; discarded ${formatBytes(r.discardedBytes)}` : ''}`,
    `  used map (${r.usedMap.source}): ${formatBytes(r.usedBytes)} in use of ${formatBytes(r.usedMap.sizeBytes)}, read in ${formatMs(r.usedMap.elapsedMs)}`,
  ];
  for (const g of r.usedMap.regions.filter((x) => !x.mapped)) lines.push(`  counted as used: ${g.what} (${formatBytes(g.length)}): ${g.why ?? 'not mapped'}`);
  lines.push(r.consistency === 'filesystem'
    ? `  filesystem-consistent${r.freezeWindowMs !== null ? `: guest filesystems frozen for ${formatMs(r.freezeWindowMs)}` : ''}`
    : '  crash-consistent');
  for (const n of r.notes) lines.push(`  note: ${n}`);
  return lines;
}

interface OneSync {
  domain: string;
  disk: string;
  to: string;
  format?: string;
  discard: boolean;
  full: boolean;
  noFreeze: boolean;
  map?: 'image' | 'agent';
  json: boolean;
}

export async function syncOne(ctx: CommandContext, o: OneSync): Promise<SyncResult> {
  let drawn = false;
  const tty = ctx.io.isTty && !o.json;
  let result: SyncEvent;
  try {
    result = await callDaemon<SyncEvent>(daemonSocket(ctx.config()), 'POST', `/v1/domains/${encodeURIComponent(o.domain)}/syncs`, {
      body: { disk: o.disk, to: o.to, format: o.format, discard: o.discard, full: o.full, noFreeze: o.noFreeze, map: o.map },
      onEvent: (raw) => {
        const ev = raw as unknown as SyncEvent;
        if (o.json) {
          ctx.io.out(JSON.stringify(ev));
          return;
        }
        if (!tty) return;
        if (ev.type === 'plan') {
          ctx.io.err(`${ev.seed ? `seeding the target (${ev.reason})` : 'incremental'}: ${formatBytes(ev.copyBytes)} to copy; ${formatBytes(ev.skippedFreeBytes)} modified but free, skipped`);
        } else if (ev.type === 'progress') {
          const pct = ev.total > 0 ? Math.min(100, (ev.done / ev.total) * 100) : 100;
          process.stderr.write(`\r\x1b[2K${o.disk}  ${pct.toFixed(0).padStart(3)}%  ${formatBytes(ev.done)} / ${formatBytes(ev.total)}  ${formatBytes(ev.bytesPerSec)}/s`);
          drawn = true;
        }
      },
    });
  } finally {
    // An error, like the report, starts on its own line.
    if (drawn) process.stderr.write('\n');
  }
  if (result.type !== 'result') throw new UsageError('virtcbtd ended the sync without a result');
  if (!o.json) for (const l of syncSummary(result)) ctx.io.out(l);
  return result;
}

export const syncCommand: Command = {
  usage: `usage: virtcbt sync DOMAIN --disk TARGET --to IMAGE|nbd://...|nbds://... [--format qcow2|raw] [--discard] [--full] [--map image|agent] [--no-freeze] [--json]
       virtcbt sync --job NAME [--json]
       virtcbt sync status [DOMAIN] [--json]

Brings a second copy of one disk up to date: copies the blocks modified since the last sync to
that copy *and* in use by the guest's filesystems now (deleted and temporary files, freed space are
never shipped). The first sync to a target, and a sync to a target that is not the copy virtcbt
left there last time (replaced, written by something else), seeds it with every used block.
  --to       an image file (made when missing: qcow2, or raw for .raw/.img names) or an NBD export
             on another host (nbds:// with TLS uses sync.tlsCertificates; see virtcbt sync-target)
  --discard  also free on the target what is free in the guest now (thin targets)
  --map      where the used map comes from: image (default: the snapshot's ext2/3/4, no guest tool)
             or agent (the guest's GETFSMAP while frozen: XFS too, a longer freeze)
  --job NAME run the sync job NAME from the config (sync.jobs), as its systemd timer does
  --json     JSON lines: every event, the result last

virtcbt sync status [DOMAIN] [--json] lists the sync targets virtcbtd knows (past syncs, and the
on-stop and scheduled syncs of the config): when each was last brought up to date, how much the
guest modified since (as folded so far), and anything the next sync will act on (a target changed
behind virtcbt's back is seeded again; an interrupted sync or seed is continued).`,
  async run(ctx) {
    if (ctx.argv[0] === 'status' && !ctx.argv.some((a) => /^--(disk|to|job)\b/.test(a))) return statusListing(ctx, ctx.argv.slice(1), this.usage, {
      command: 'sync status', resource: 'syncs', field: 'targets', empty: 'no sync targets: none synced yet, none in the config', describe: describeStatus,
    });
    const { values, positionals } = parse(ctx.argv, {
      disk: { type: 'string' },
      to: { type: 'string' },
      format: { type: 'string' },
      discard: { type: 'boolean' },
      full: { type: 'boolean' },
      map: { type: 'string' },
      'no-freeze': { type: 'boolean' },
      job: { type: 'string' },
      json: { type: 'boolean' },
    }, this.usage);
    const json = Boolean(values.json);
    if (values.format !== undefined && values.format !== 'qcow2' && values.format !== 'raw') throw new UsageError(`--format must be qcow2 or raw\n\n${this.usage}`);
    const map = mapArg(values.map, this.usage);
    if (values.job !== undefined) {
      if (positionals.length > 0 || values.disk || values.to) throw new UsageError(`--job takes the domain, disk and target from the config: give no others\n\n${this.usage}`);
      const job = ctx.config().sync.jobs.find((j) => j.name === values.job);
      if (!job) throw new UsageError(`no sync job '${values.job}' in the config (sync.jobs has ${ctx.config().sync.jobs.map((j) => j.name).join(', ') || 'none'})`);
      try {
        await syncOne(ctx, { domain: job.domain, disk: job.disk, to: job.to, format: job.format, discard: job.discard ?? false, full: Boolean(values.full), noFreeze: Boolean(values['no-freeze']), map, json });
      } catch (err) {
        throw err instanceof VirtcbtError ? err : new VirtcbtError(`sync job ${job.name}: ${errorMessage(err)}`, { cause: err });
      }
      return EXIT.OK;
    }
    const domain = domainArg(positionals, this.usage);
    if (!values.disk) throw new UsageError(`--disk is required (e.g. vda)\n\n${this.usage}`);
    if (!values.to) throw new UsageError(`--to is required: an image file or an nbd:// / nbds:// URI\n\n${this.usage}`);
    await syncOne(ctx, {
      domain, disk: values.disk, to: targetArg(values.to), format: values.format, discard: Boolean(values.discard),
      full: Boolean(values.full), noFreeze: Boolean(values['no-freeze']), map, json,
    });
    return EXIT.OK;
  },
};

function describeStatus(t: SyncTargetStatus): string[] {
  const head = `${t.domain} ${t.disk} → ${t.target}: ${t.lastSync ? `last synced ${t.lastSync}` : 'never synced to completion'}` +
    (t.modifiedSince ? `; ${t.modifiedSince.full ? 'everything (no history)' : formatBytes(t.modifiedSince.bytes)} modified since` : '');
  const lines = [head];
  if (t.configured.length > 0) lines.push(`  configured: ${t.configured.join(', ')}`);
  if (t.writing) lines.push(t.writing.live ? `  a sync is writing it now (since ${t.writing.startedAt})` : `  a sync begun ${t.writing.startedAt} ended with its virtcbtd: recorded at the next start or sync`);
  if (t.seedResumesAt !== undefined) lines.push(`  an interrupted seed: the next sync resumes it from byte ${t.seedResumesAt}`);
  if (t.interruptedAt) lines.push(`  the sync of ${t.interruptedAt} was interrupted after it began writing: the next copies everything since the last complete one`);
  if (t.targetChanged) lines.push(`  ! ${t.targetChanged}: the next sync seeds it with every used block`);
  if (t.recordProblem) lines.push(`  ! ${t.recordProblem}: the next sync seeds the target`);
  if (t.problem) lines.push(`  ! ${t.problem}`);
  return lines;
}

export const usedmapCommand: Command = {
  usage: `usage: virtcbt usedmap DOMAIN --disk TARGET [--map image|agent] [--json]

Prints which byte ranges of the disk the guest's filesystems use now, as a sync would copy them:
read from a point-in-time view of the disk (ext2/3/4, no guest tool needed), or with --map agent
from the guest itself while it is frozen (GETFSMAP; XFS too). Partition tables, boot-loader gaps,
LVM, swap and filesystems that cannot be read count as used, and are named with why.`,
  async run(ctx) {
    const { values, positionals } = parse(ctx.argv, { disk: { type: 'string' }, map: { type: 'string' }, json: { type: 'boolean' } }, this.usage);
    const domain = domainArg(positionals, this.usage);
    if (!values.disk) throw new UsageError(`--disk is required (e.g. vda)\n\n${this.usage}`);
    const r = await callDaemon<UsedMap & { disk: string; consistency: string; freezeWindowMs: number | null; image?: UsedMap; agree?: boolean }>(daemonSocket(ctx.config()), 'POST',
      `/v1/domains/${encodeURIComponent(domain)}/usedmap`, { body: { disk: values.disk, map: mapArg(values.map, this.usage) } });
    const pairs = (m: UsedMap) => m.used.map((e) => [e.offset, e.length]);
    emit(ctx.io, Boolean(values.json), { ...r, used: pairs(r), image: r.image && { ...r.image, used: pairs(r.image) } }, () => {
      const usedBytes = r.used.reduce((s, e) => s + e.length, 0);
      return [
        `${domain} ${r.disk}: ${formatBytes(usedBytes)} in use of ${formatBytes(r.sizeBytes)} in ${r.used.length} extent${r.used.length === 1 ? '' : 's'} (${r.source} map, ${formatMs(r.elapsedMs)})`,
        ...r.regions.map((g) => `  ${g.offset}+${g.length}  ${g.what}: ${g.mapped ? 'mapped' : `counted as used (${g.why ?? 'not mapped'})`}`),
        r.consistency === 'filesystem' && r.freezeWindowMs !== null ? `  guest filesystems frozen for ${formatMs(r.freezeWindowMs)}` : `  ${r.consistency}`,
        ...(r.image ? [`  the image's map of the same instant ${r.agree ? 'agrees' : `differs (${formatBytes(r.image.used.reduce((s, e) => s + e.length, 0))} in use)`}`] : []),
      ];
    });
    return EXIT.OK;
  },
};

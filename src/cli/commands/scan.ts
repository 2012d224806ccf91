// `virtcbt scan`: asks virtcbtd to hand a snapshot of a running domain to a scanner host and wait
// for its verdict; the action on detection is the quarantine's (scan.quarantine in the config).
import type { DomainStatusReply } from '../../daemon/api-types.js';
import type { ScanEvent, ScanResult, ScanStatus } from '../../scan/index.js';
import { UsageError, VirtcbtError, errorMessage } from '../../util/errors.js';
import { domainArg, parse } from '../args.js';
import { EXIT, type Command, type CommandContext } from '../command.js';
import { callDaemon, daemonSocket } from '../daemon-client.js';
import { formatBytes } from '../output.js';
import { formatMs } from './backup.js';
import { statusListing } from './status-listing.js';

export function scanSummary(r: ScanResult): string[] {
  const v = r.verdict;
  const lines = [`${r.domain}: ${r.full ? `full scan${r.reason ? ` (${r.reason})` : ''}` : 'incremental scan'} by ${r.scanner} in ${formatMs(r.elapsedMs)}: ` +
    (v.infected?.length ? `${v.infected.length} infected file${v.infected.length === 1 ? '' : 's'}` : v.complete !== true ? 'nothing found in what was scanned, but the scan is INCOMPLETE (below)' : 'nothing found')];
  for (const f of v.infected ?? []) lines.push(`  INFECTED ${f.disk}:${f.path}  ${f.signature}${f.size !== undefined ? `  ${formatBytes(f.size)}` : ''}${f.sha256 ? `  sha256 ${f.sha256}` : ''}`);
  for (const n of v.notScanned ?? []) lines.push(`  NOT SCANNED: ${n.disk}${n.partition !== undefined ? ` partition ${n.partition}` : ''} (${n.kind}): ${n.reason}`);
  for (const k of v.skipped ?? []) lines.push(`  skipped: ${k.disk}:${k.path}: ${k.reason}${k.detail ? ` (${k.detail})` : ''}`);
  for (const l of v.limitsHit ?? []) lines.push(`  limit hit: ${l.limit}${l.value === undefined ? '' : ` ${l.value}`} (${l.files} files)`);
  if (v.scanned) lines.push(`  scanned: ${Object.entries(v.scanned).map(([k, n]) => `${k} ${n}`).join(', ')}`);
  for (const n of r.notes) lines.push(`  note: ${n}`);
  return lines;
}

/**
 * The progress line a terminal shows for one of the scanner's events (undefined: the line stays):
 * the disk being scanned (from its `disk` event), files scanned, bytes sent to clamd and read over NBD.
 */
export function scanProgressLine(e: Record<string, unknown>, state: { disk?: string; mode?: string }): string | undefined {
  const n = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
  if (e.type === 'disk') {
    state.disk = String(e.disk ?? '');
    state.mode = String(e.mode ?? '');
    return `${state.disk}: ${state.mode} scan starting`;
  }
  if (e.type === 'progress') {
    return `${state.disk ?? ''}${state.mode ? ` (${state.mode})` : ''}: ${n(e.files)} files scanned, ${formatBytes(n(e.bytesRead))} to clamd, ${formatBytes(n(e.nbdBytesRead))} read over NBD`;
  }
  return undefined;
}

async function scanOne(ctx: CommandContext, domain: string, o: { scanner?: string; full: boolean; noFreeze: boolean; json: boolean }): Promise<number> {
  const progress: { disk?: string; mode?: string } = {};
  let shown = false;
  let result: ScanEvent;
  try {
    result = await callDaemon<ScanEvent>(daemonSocket(ctx.config()), 'POST', `/v1/domains/${encodeURIComponent(domain)}/scans`, {
      body: { scanner: o.scanner, full: o.full, noFreeze: o.noFreeze },
      onEvent: (raw) => {
        if (o.json) ctx.io.out(JSON.stringify(raw));
        else if (ctx.io.isTty && (raw as { type?: string }).type === 'scanner') {
          const line = scanProgressLine((raw as { event: Record<string, unknown> }).event, progress);
          if (line !== undefined) {
            process.stderr.write(`\r\x1b[2K${line}`);
            shown = true;
          }
        }
      },
    });
  } finally {
    // The report (or the error) starts on a clean line, not after the last progress line.
    if (shown) process.stderr.write('\r\x1b[2K');
  }
  if (result.type !== 'result') throw new UsageError('virtcbtd ended the scan without a result');
  if (!o.json) for (const l of scanSummary(result)) ctx.io.out(l);
  return scanExitCode(result);
}

/**
 * 10 malware found; 11 nothing found but not everything looked at (never read as clean); 0 clean.
 * Clean only on the scanner's word that the verdict is complete: a verdict without it is not.
 */
export function scanExitCode(r: ScanResult): number {
  if (r.verdict.infected?.length) return EXIT.INFECTED;
  return r.verdict.complete !== true ? EXIT.INCOMPLETE : EXIT.OK;
}

/** The domain's libvirt state when it is not running (shut off, crashed), else undefined; asked of virtcbtd. */
async function notRunning(ctx: CommandContext, domain: string): Promise<string | undefined> {
  const d = await callDaemon<DomainStatusReply>(daemonSocket(ctx.config()), 'GET', `/v1/domains/${encodeURIComponent(domain)}`);
  return d.state === 'shut off' || d.state === 'crashed' ? d.state : undefined;
}

export const scanCommand: Command = {
  usage: `usage: virtcbt scan DOMAIN [--scanner NAME] [--full] [--no-freeze] [--json]
       virtcbt scan --job NAME [--json]
       virtcbt scan status [DOMAIN] [--json]

Takes a snapshot of the running domain without pausing it, exports its disks to a scanner host
(NBD over TLS, only the scanner's identity gets in), and waits for the scanner's verdict; on
detection the domain is quarantined as scan.quarantine says. A scan reads only the files whose
blocks changed since that scanner's last completed scan, unless --full (or scan.fullEveryHours).
Exit 0 when nothing was found and everything was scanned, 10 when malware was found, 11 when
nothing was found but something was not scanned (a filesystem the scanner cannot read, a limit
hit, a skipped file: listed in the report).
  --scanner NAME  one of scan.scanners (default: the first that answers)
  --job NAME      scan each domain of the scan job NAME from the config (scan.jobs), as its
                  systemd timer does; a domain that is shut off is skipped (said so), not failed
  --json          JSON lines: every event, the result last

virtcbt scan status [DOMAIN] [--json] shows, per tracked domain and configured scanner, when the
last completed scan ended and what it found, when the next full scan is due, how much the guest
modified since (what the next incremental scan covers, as folded so far), and the quarantine.`,
  async run(ctx) {
    if (ctx.argv[0] === 'status' && !ctx.argv.some((a) => /^--(scanner|job|full)\b/.test(a))) return statusListing(ctx, ctx.argv.slice(1), this.usage, {
      command: 'scan status', resource: 'scans', field: 'scans', empty: 'no scans: no tracked domain, or no scanner in scan.scanners', describe: describeScanStatus,
    });
    const { values, positionals } = parse(ctx.argv, {
      scanner: { type: 'string' }, full: { type: 'boolean' }, 'no-freeze': { type: 'boolean' }, job: { type: 'string' }, json: { type: 'boolean' },
    }, this.usage);
    const json = Boolean(values.json);
    const one = (domain: string, scanner: string | undefined) => scanOne(ctx, domain, { scanner, full: Boolean(values.full), noFreeze: Boolean(values['no-freeze']), json });
    if (values.job !== undefined) {
      if (positionals.length > 0) throw new UsageError(`--job takes its domains from the config: give none\n\n${this.usage}`);
      const job = ctx.config().scan.jobs.find((j) => j.name === values.job);
      if (!job) throw new UsageError(`no scan job '${values.job}' in the config (scan.jobs has ${ctx.config().scan.jobs.map((j) => j.name).join(', ') || 'none'})`);
      const codes: number[] = [];
      const failed: string[] = [];
      for (const domain of job.domains) {
        try {
          // A listed domain that is shut off has no running disk to snapshot, and nothing new to
          // scan: its consumer stays, and its first scan once it runs covers every change since.
          const off = await notRunning(ctx, domain);
          if (off) {
            if (json) ctx.io.out(JSON.stringify({ type: 'skipped', domain, reason: `not running (${off})` }));
            else ctx.io.out(`${domain}: not running (${off}): skipped; its next scan covers every change since its last one`);
            continue;
          }
          codes.push(await one(domain, values.scanner ?? job.scanner));
        } catch (err) {
          // One domain's failure must not cost the others their scan.
          ctx.io.err(`virtcbt scan: ${domain}: ${errorMessage(err)}`);
          failed.push(domain);
        }
      }
      if (failed.length > 0) throw new VirtcbtError(`scan job ${job.name}: ${failed.length} of ${job.domains.length} domains failed (${failed.join(', ')})`);
      return codes.includes(EXIT.INFECTED) ? EXIT.INFECTED : codes.includes(EXIT.INCOMPLETE) ? EXIT.INCOMPLETE : EXIT.OK;
    }
    return one(domainArg(positionals, this.usage), values.scanner);
  },
};

function describeScanStatus(s: ScanStatus): string[] {
  const l = s.last;
  const last = s.lastScanAt && l
    ? `last ${l.full ? 'full' : 'incremental'} scan ${s.lastScanAt}: ${l.filesOpened} file${l.filesOpened === 1 ? '' : 's'} read, ` +
      `${l.infected > 0 ? `${l.infected} INFECTED` : 'nothing found'}${l.complete ? '' : ` (not complete: ${l.notScanned} region${l.notScanned === 1 ? '' : 's'} not scanned, ${l.skipped} skipped)`}`
    : 'no completed scan';
  const lines = [`${s.domain} (scanner ${s.scanner}): ${last}${s.quarantine === 'quarantined' ? '; QUARANTINED' : ''}`];
  if (s.modifiedSince) lines.push(`  modified since: ${s.modifiedSince.full ? 'everything (no history)' : formatBytes(s.modifiedSince.bytes)}`);
  lines.push(`  next full scan: ${s.nextFull}${s.lastFullAt ? ` (last full ${s.lastFullAt})` : ''}`);
  if (s.recordProblem) lines.push(`  ! ${s.recordProblem}`);
  return lines;
}

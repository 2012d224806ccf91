// Tracking commands: enable, disable, status, reconcile, changes — thin clients of virtcbtd.
import type { ChangesReply, DomainStatusReply, EnableReply, ReconcileReply, StatusReply } from '../../daemon/api-types.js';
import { parse, domainArg } from '../args.js';
import { EXIT, type Command, type CommandContext } from '../command.js';
import { callDaemon, daemonSocket } from '../daemon-client.js';
import { emit, formatBytes } from '../output.js';
import { scannerOfConsumer } from '../../scan/names.js';
import { isSyncConsumer, seedPinOwner } from '../../sync/target.js';
import { UsageError } from '../../util/errors.js';

const api = (ctx: CommandContext) => daemonSocket(ctx.config());
const enc = encodeURIComponent;

export const enableCommand: Command = {
  usage: `usage: virtcbt enable DOMAIN [--exclude DISK]... [--no-agent] [--json]

Adds virtcbt's dedicated QMP monitor to the persistent domain XML, checks the guest-agent channel,
and creates a persistent dirty bitmap on every qcow2 disk (offline with qemu-img when the VM is off).
Raw disks cannot carry persistent bitmaps: convert them to qcow2 or leave them out with --exclude.
  --exclude DISK  do not track this disk (target name, e.g. vdb); repeatable
  --no-agent      accept a domain without a guest-agent channel (backups are then crash-consistent)`,
  async run(ctx) {
    const { values, positionals } = parse(ctx.argv, {
      exclude: { type: 'string', multiple: true },
      'no-agent': { type: 'boolean' },
      json: { type: 'boolean' },
    }, this.usage);
    const domain = domainArg(positionals, this.usage);
    const r = await callDaemon<EnableReply>(api(ctx), 'POST', `/v1/domains/${enc(domain)}/enable`, {
      body: { exclude: values.exclude ?? [], noAgent: Boolean(values['no-agent']) },
    });
    emit(ctx.io, Boolean(values.json), r, () => [
      `${domain}: tracking ${r.disks.map((d) => `${d.target} (${formatBytes(d.sizeBytes)})`).join(', ')}`,
      ...r.notes,
    ]);
    return EXIT.OK;
  },
};

export const disableCommand: Command = {
  usage: `usage: virtcbt disable DOMAIN [--json]`,
  async run(ctx) {
    const { values, positionals } = parse(ctx.argv, { json: { type: 'boolean' } }, this.usage);
    const domain = domainArg(positionals, this.usage);
    const r = await callDaemon<{ notes: string[] }>(api(ctx), 'POST', `/v1/domains/${enc(domain)}/disable`);
    emit(ctx.io, Boolean(values.json), r, () => [`${domain}: tracking disabled`, ...(r.notes ?? [])]);
    return EXIT.OK;
  },
};

function describeDomain(d: DomainStatusReply): string[] {
  const lines = [
    `${d.domain}: ${d.state}${d.connected ? ', monitor connected' : ''}${d.pendingRestart ? ', tracking starts fully after the next restart' : ''}; change log ${d.logId?.slice(0, 8) ?? 'unknown'}, generation ${d.generation}` +
      (d.lastFoldAt ? `; last fold ${d.lastFoldAt}` : ''),
  ];
  if (d.lastError) lines.push(`  last error: ${d.lastError}`);
  for (const k of d.disks) {
    lines.push(`  ${k.target}: ${formatBytes(k.sizeBytes)}, block ${formatBytes(k.blockSize)}, bitmap ${k.activeBitmap ?? 'none'}, floor ${k.floor}` +
      (k.floorReason ? ` (${k.floorReason})` : ''));
  }
  for (const c of d.consumers) lines.push(`  consumer ${c.name}: ${c.last === null ? 'no pass yet (next pass is full)' : `last pass at generation ${c.last}`}${consumerRole(c.name)}`);
  for (const p of d.openPasses) lines.push(`  open pass ${p.id}: consumer ${p.consumer}, generation ${p.generation}, since ${p.startedAt}`);
  return lines;
}

export const statusCommand: Command = {
  usage: `usage: virtcbt status [DOMAIN] [--json]

Exits 1 while virtcbtd cannot reach libvirt (the JSON's libvirt.error or libvirtError says why).`,
  async run(ctx) {
    const { values, positionals } = parse(ctx.argv, { json: { type: 'boolean' } }, this.usage);
    const json = Boolean(values.json);
    // While libvirt is unreachable nothing can be folded or backed up: status says so and fails.
    if (positionals[0]) {
      const d = await callDaemon<DomainStatusReply>(api(ctx), 'GET', `/v1/domains/${enc(positionals[0])}`);
      emit(ctx.io, json, d, () => describeDomain(d));
      if (d.libvirtError) {
        if (!json) ctx.io.err(`virtcbt: libvirt is unreachable: ${d.libvirtError}`);
        return EXIT.FAILED;
      }
    } else {
      const s = await callDaemon<StatusReply>(api(ctx), 'GET', '/v1/status');
      emit(ctx.io, json, s, () => s.domains.length === 0
        ? [`virtcbtd ${s.daemon.version} (pid ${s.daemon.pid}): no domain is tracked; see \`virtcbt enable DOMAIN\``]
        : s.domains.flatMap(describeDomain));
      if (s.libvirt && !s.libvirt.reachable) {
        if (!json) ctx.io.err(`virtcbt: libvirt at ${s.libvirt.uri} is unreachable: ${s.libvirt.error ?? 'no answer'}`);
        return EXIT.FAILED;
      }
    }
    return EXIT.OK;
  },
};

export const reconcileCommand: Command = {
  usage: `usage: virtcbt reconcile DOMAIN [--json]`,
  async run(ctx) {
    const { values, positionals } = parse(ctx.argv, { json: { type: 'boolean' } }, this.usage);
    const domain = domainArg(positionals, this.usage);
    const r = await callDaemon<ReconcileReply>(api(ctx), 'POST', `/v1/domains/${enc(domain)}/reconcile`);
    emit(ctx.io, Boolean(values.json), r, () => r.disks.map((d) =>
      `${domain} ${d.target}: folded ${formatBytes(d.dirtyBytes)}${d.floorRaised ? `; floor raised: ${d.floorRaised}` : ''}`));
    return EXIT.OK;
  },
};

export function describeChanges(r: ChangesReply): string[] {
  return r.disks.map((d) => `${r.domain} ${d.target}: ${d.full ? `full pass${d.reason ? ` (${d.reason})` : ''}` : `${d.extents.length} extents`}, ${formatBytes(d.changedBytes)} of ${formatBytes(d.sizeBytes)}`);
}

export const changesCommand: Command = {
  usage: `usage: virtcbt changes DOMAIN --consumer NAME [--json]

Folds first, then lists per disk the extents ([offset, length] in bytes) changed since the
consumer's last completed pass, or says the pass must be full. Moves nothing.`,
  async run(ctx) {
    const { values, positionals } = parse(ctx.argv, { consumer: { type: 'string' }, json: { type: 'boolean' } }, this.usage);
    const domain = domainArg(positionals, this.usage);
    if (!values.consumer) throw new UsageError(`--consumer is required\n\n${this.usage}`);
    const r = await callDaemon<ChangesReply>(api(ctx), 'GET', `/v1/domains/${enc(domain)}/changes?consumer=${enc(values.consumer)}`);
    emit(ctx.io, Boolean(values.json), r, () => describeChanges(r));
    return EXIT.OK;
  },
};

/** What virtcbt itself uses a consumer for, by its name (syncs and scans make their own), for listings. */
export function consumerRole(name: string): string {
  if (seedPinOwner(name) !== undefined) return ' (keeps the history an interrupted seed resumes from; goes with that sync)';
  if (isSyncConsumer(name)) return ' (a sync target: virtcbt sync status)';
  const scanner = scannerOfConsumer(name);
  if (scanner !== undefined) return ` (scanner ${scanner}: virtcbt scan status)`;
  return '';
}

// Repository commands that need no QEMU and no daemon: list, verify, restore, prune. The
// repository room is imported when a command runs: it pulls in execa, slow to load for every CLI call.
import { join, resolve } from 'node:path';
import type { Manifest, PruneStep, RepoProblem } from '../../repo/index.js';
import { UsageError } from '../../util/errors.js';
import { domainArg, parse, positional } from '../args.js';
import { EXIT, type Command } from '../command.js';
import { emit, formatBytes } from '../output.js';
import { formatMs, repoArg } from './backup.js';

function listRow(m: Manifest): string {
  const bytes = m.disks.reduce((s, d) => s + d.bytes, 0);
  return [m.id.padEnd(16), m.time, m.kind.padEnd(11), `gen ${m.generation}`.padEnd(8), formatBytes(bytes).padStart(10),
    m.consistency === 'filesystem' ? 'fs-consistent' : 'crash-consistent', m.disks.map((d) => d.target).join(',')].join('  ');
}

export const listCommand: Command = {
  usage: `usage: virtcbt list [--repo DIR] [DOMAIN] [--json]

Lists every backup (restore point) of DOMAIN, or of every domain in the repository, oldest first:
each consumer's points in the order they were taken (by sequence, whatever the clock said), the
consumers merged by time. Damaged manifests are reported on stderr (\`problems\` in --json), files
that belong to no chain as warnings (\`warnings\`); the other points are listed all the same.`,
  async run(ctx) {
    const { values, positionals } = parse(ctx.argv, { repo: { type: 'string' }, json: { type: 'boolean' } }, this.usage);
    const { Repository, diskChain } = await import('../../repo/index.js');
    const repo = await Repository.open(repoArg(ctx, values.repo, this.usage));
    const domains = positionals[0] ? [domainArg(positionals, this.usage)] : await repo.domains();
    const out: { domain: string; backups: Omit<Manifest, 'domainXml'>[]; problems: RepoProblem[]; warnings: RepoProblem[] }[] = [];
    const broken = new Set<string>(); // DOMAIN/CONSUMER/ID
    const key = (domain: string, m: { consumer: string; id: string }) => `${domain}/${m.consumer}/${m.id}`;
    for (const d of domains) {
      const state = await repo.domainState(d);
      const problems = [...state.damaged];
      // A point above a damaged manifest has no base the manifests vouch for: restore refuses it (cheap: names only).
      for (const c of state.chains) {
        for (const m of c.points) {
          for (const disk of m.disks) {
            try {
              diskChain(c.all, m, disk.target);
            } catch (err) {
              broken.add(key(d, m));
              problems.push({ path: join(repo.chainDir(d, c.consumer), `${m.id}.json`), consumer: c.consumer, id: m.id, problem: `restore point ${m.id} cannot be restored: ${(err as Error).message}` });
              break;
            }
          }
        }
      }
      out.push({ domain: d, backups: state.points.map(({ domainXml: _x, ...rest }) => rest), problems, warnings: state.ignored });
    }
    if (!values.json) {
      for (const d of out) {
        for (const p of d.problems) ctx.io.err(`${d.domain}: DAMAGED ${p.path}: ${p.problem}`);
        for (const p of d.warnings) ctx.io.err(`${d.domain}: warning: ${p.path}: ${p.problem}`);
      }
      if (out.some((d) => d.problems.length > 0)) {
        ctx.io.err('Run `virtcbt verify` for the whole picture; the points listed and not marked NOT RESTORABLE are intact and restorable by id');
      }
    }
    emit(ctx.io, Boolean(values.json), { repo: repo.root, domains: out }, () => {
      if (out.every((d) => d.backups.length === 0)) return [`no backups in ${repo.root}${positionals[0] ? ` for ${positionals[0]}` : ''}`];
      return out.flatMap((d) => [`${d.domain}:`, ...d.backups.map((m) => `  ${listRow(m as Manifest)}${broken.has(key(d.domain, m)) ? '  NOT RESTORABLE' : ''}`)]);
    });
    return EXIT.OK;
  },
};

export const verifyCommand: Command = {
  usage: `usage: virtcbt verify [--repo DIR] [DOMAIN] [--json]

Re-reads every restore point's copied data through its chain and compares the checksum with
the manifest; runs \`qemu-img check\` on each image and checks the backing links. Exits 1 if
anything is wrong.`,
  async run(ctx) {
    const { values, positionals } = parse(ctx.argv, { repo: { type: 'string' }, json: { type: 'boolean' } }, this.usage);
    const json = Boolean(values.json);
    const { Repository, verifyRepo } = await import('../../repo/index.js');
    const repo = await Repository.open(repoArg(ctx, values.repo, this.usage));
    const domain = positionals[0] ? domainArg(positionals, this.usage) : undefined;
    const tty = !json && ctx.io.isTty;
    const report = await verifyRepo(repo, domain, (v) => {
      // Progress on the terminal only, redrawn in place: the verdicts follow on stdout.
      if (tty) process.stderr.write(`\r\x1b[2Kverified ${v.id} ${v.disk}`);
    });
    if (tty) process.stderr.write('\r\x1b[2K');
    if (!json) for (const p of report.ignored) ctx.io.err(`warning: ${p.path}: ${p.problem}`);
    emit(ctx.io, json, report, () => [
      ...report.disks.map((v) => `${v.id} ${v.disk}: ${v.ok ? 'ok' : `FAILED: ${v.problems.join('; ')}`}${v.warnings.length ? ` (${v.warnings.join('; ')})` : ''}`),
      `${report.checked} restore point(s), ${report.disks.length} image(s): ${report.ok ? 'all good' : `${report.disks.filter((v) => !v.ok).length} FAILED`}`,
    ]);
    return report.ok ? EXIT.OK : EXIT.FAILED;
  },
};

export const restoreCommand: Command = {
  usage: `usage: virtcbt restore [--repo DIR] DOMAIN --disk TARGET --to FILE|DEVICE [--at BACKUP] [--format qcow2|raw] [--force] [--json]

  --at BACKUP   a backup id from \`virtcbt list\`, or an ISO time (the newest backup taken at or
                before it); default: the newest backup of any consumer
  --format      qcow2 (default) or raw; the file is sparse where the disk reads as zeroes
  --force       replace FILE if it exists (a regular file only), or write onto a block DEVICE
                in place (with --format raw; the device must be at least the disk's size)

Restored files are created readable by their owner only (0600).`,
  async run(ctx) {
    const { values, positionals } = parse(ctx.argv, {
      repo: { type: 'string' }, disk: { type: 'string' }, to: { type: 'string' }, at: { type: 'string' },
      format: { type: 'string' }, force: { type: 'boolean' }, json: { type: 'boolean' },
    }, this.usage);
    const domain = domainArg(positionals, this.usage);
    if (!values.disk) throw new UsageError(`--disk is required\n\n${this.usage}`);
    if (!values.to) throw new UsageError(`--to is required\n\n${this.usage}`);
    const format = (values.format ?? 'qcow2') as 'qcow2' | 'raw';
    if (format !== 'qcow2' && format !== 'raw') throw new UsageError(`--format must be qcow2 or raw\n\n${this.usage}`);
    const { Repository, restoreDisk } = await import('../../repo/index.js');
    const repo = await Repository.open(repoArg(ctx, values.repo, this.usage));
    const cfg = ctx.config();
    let last = 0;
    const r = await restoreDisk(repo, {
      domain, disk: values.disk, to: resolve(values.to), at: values.at, format, force: Boolean(values.force),
      requestSize: cfg.nbd.requestSize, inflight: cfg.nbd.inflight,
      onProgress: ctx.io.isTty && !values.json ? (p, total) => {
        const now = Date.now();
        if (now - last < 250) return;
        last = now;
        process.stderr.write(`\r\x1b[2K${values.disk}  ${((p.done / Math.max(1, total)) * 100).toFixed(0)}%  ${formatBytes(p.done)} / ${formatBytes(total)}`);
      } : undefined,
    });
    if (ctx.io.isTty && !values.json) process.stderr.write('\r\x1b[2K');
    emit(ctx.io, Boolean(values.json), r, () => [
      `restored ${domain} ${r.disk} from ${r.id} (${r.time}) ${r.target === 'device' ? 'onto the block device' : 'to'} ${r.to} (${r.format}, ${formatBytes(r.sizeBytes)}): ${formatBytes(r.written)} of data written in ${formatMs(r.elapsedMs)}`,
    ]);
    return EXIT.OK;
  },
};

/** Test-only fault injection: VIRTCBT_FAULT_PRUNE_STEP=commit kills the prune right after that step. */
function pruneFault(steps: readonly PruneStep[]): ((s: PruneStep) => void) | undefined {
  const step = process.env.VIRTCBT_FAULT_PRUNE_STEP as PruneStep | undefined;
  if (!step || !steps.includes(step)) return undefined;
  return (s) => {
    if (s === step) process.kill(process.pid, 'SIGKILL');
  };
}

export const pruneCommand: Command = {
  usage: `usage: virtcbt prune [--repo DIR] DOMAIN --consumer NAME --keep N [--json]
       virtcbt prune [--repo DIR] DOMAIN --consumer NAME --abort [--json]

Removes the consumer's oldest restore points; increments the kept ones depend on are merged into
their base (qemu-img commit). Every image the prune touches is checked first: on a damaged chain
it changes nothing. A prune that is interrupted leaves a valid chain and is finished by the next
one; --abort drops it instead, as long as it has not merged anything yet.`,
  async run(ctx) {
    const { values, positionals } = parse(ctx.argv, {
      repo: { type: 'string' }, consumer: { type: 'string' }, keep: { type: 'string' }, abort: { type: 'boolean' }, json: { type: 'boolean' },
    }, this.usage);
    const domain = domainArg(positionals, this.usage);
    if (!values.consumer) throw new UsageError(`--consumer is required\n\n${this.usage}`);
    if (values.abort) {
      if (values.keep !== undefined) throw new UsageError(`--abort takes no --keep\n\n${this.usage}`);
      const { Repository, abortPrune } = await import('../../repo/index.js');
      const repo = await Repository.open(repoArg(ctx, values.repo, this.usage));
      const r = await abortPrune(repo, domain, values.consumer);
      emit(ctx.io, Boolean(values.json), { domain, consumer: values.consumer, ...r }, () => [
        r.dropped ? `${domain} ${values.consumer}: prune dropped${r.restored.length ? `; listed again: ${r.restored.join(', ')}` : ''}` : `${domain} ${values.consumer}: no prune under way`,
      ]);
      return EXIT.OK;
    }
    const keep = Number(positional([values.keep ?? ''], 0, '--keep N', this.usage));
    if (!Number.isInteger(keep) || keep < 1) throw new UsageError(`--keep must be a whole number of at least 1\n\n${this.usage}`);
    const { PRUNE_STEPS, Repository, pruneChain } = await import('../../repo/index.js');
    const repo = await Repository.open(repoArg(ctx, values.repo, this.usage));
    const r = await pruneChain(repo, domain, values.consumer, keep, { fault: pruneFault(PRUNE_STEPS) });
    emit(ctx.io, Boolean(values.json), r, () => [
      `${domain} ${values.consumer}: removed ${r.removed.length} restore point(s)${r.removed.length ? ` (${r.removed.join(', ')})` : ''}` +
        `${r.mergedInto ? `; merged into ${r.mergedInto}` : ''}${r.resumed ? '; finished an interrupted prune first' : ''}; kept ${r.kept.join(', ') || 'none'}`,
    ]);
    return EXIT.OK;
  },
};

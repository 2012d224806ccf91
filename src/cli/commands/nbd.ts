// `virtcbt nbd info|map|copy|list`: the NBD client used directly, for admins debugging an export.
import { stat } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import type { Endpoint } from '../../copy/index.js';
import { UsageError } from '../../util/errors.js';
import { EXIT, type Command, type CommandContext } from '../command.js';

// The NBD client and copy engine load only when an nbd subcommand runs: other commands start faster.
const nbd = () => import('../../nbd/index.js');
const copyRoom = () => import('../../copy/index.js');

const USAGE = `usage: virtcbt nbd info URI [--json]
       virtcbt nbd list URI [--json]
       virtcbt nbd map URI [--context NAME] [--json]
       virtcbt nbd copy SRC DST [--requests N] [--request-size BYTES] [--connections N]
                                [--destination-is-zero] [--progress]

Talks to an NBD server directly (QEMU, qemu-nbd, qemu-storage-daemon), without virtcbtd.

URI forms (as libnbd writes them):
  nbd+unix:///EXPORT?socket=PATH      nbd://HOST[:PORT]/EXPORT
  nbds+unix:///EXPORT?socket=PATH&tls-certificates=DIR     nbds://HOST/EXPORT?tls-certificates=DIR
  (DIR holds ca-cert.pem, client-cert.pem, client-key.pem, as for qemu tls-creds-x509)

info   size, flags, block sizes and metadata contexts of the export.
list   the exports the server lists.
map    block status in nbdinfo --map's columns: offset, length, type, description.
       --context NAME   base:allocation (default), qemu:dirty-bitmap:NAME, qemu:allocation-depth
       --json           a JSON array like nbdinfo --map --json
copy   SRC is a URI or a file; DST is a URI, a file (created or truncated, sparse) or null:.
       Zero ranges of the source (base:allocation) are not read; they are skipped on a new file
       or with --destination-is-zero, else written as zeroes.

Exit codes: 0 success, 1 failure, 2 bad usage, 5 NBD protocol or server error.`;

interface NbdDefaults {
  requestSize: number;
  inflight: number;
  connections: number;
  timeoutMs: number;
}

function defaults(ctx: CommandContext): NbdDefaults {
  try {
    return ctx.config().nbd;
  } catch {
    // A broken config file must not stop an admin from debugging an export.
    return { requestSize: 256 * 1024, inflight: 64, connections: 1, timeoutMs: 60_000 };
  }
}

function positiveInt(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n <= 0) throw new UsageError(`${name} must be a positive integer, not "${v}"`);
  return n;
}

function isUri(s: string): boolean {
  return /^nbds?(\+unix)?:\/\//.test(s);
}

function humanSize(n: number): string {
  const units = ['', 'K', 'M', 'G', 'T', 'P', 'E'];
  let u = 0;
  let v = n;
  while (v >= 1024 && v % 1024 === 0 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v}${units[u]}`;
}

async function info(ctx: CommandContext, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, options: { json: { type: 'boolean' } }, allowPositionals: true });
  if (positionals.length !== 1) throw new UsageError(`nbd info takes one URI\n\n${USAGE}`);
  const { NbdClient, decodeFlags, formatNbdUri, parseNbdUri } = await nbd();
  const target = parseNbdUri(positionals[0]!);
  const d = await NbdClient.describe(target, { timeoutMs: defaults(ctx).timeoutMs });
  const f = decodeFlags(d.export.flags);
  const bs = d.export.blockSize;
  const uri = formatNbdUri(target);
  if (values.json) {
    ctx.io.out(JSON.stringify({
      protocol: 'newstyle-fixed', TLS: d.tls, structured: d.structuredReplies,
      'export-name': d.export.exportName, uri, 'export-size': d.export.size,
      description: d.export.description, contexts: d.contexts,
      is_read_only: f.readOnly, is_rotational: f.rotational, can_cache: f.canCache, can_df: f.canDf,
      can_fast_zero: f.canFastZero, can_flush: f.canFlush, can_fua: f.canFua, can_multi_conn: f.canMultiConn,
      can_trim: f.canTrim, can_zero: f.canZero,
      block_size_minimum: bs.min, block_size_preferred: bs.preferred, block_size_maximum: bs.max,
    }, null, 2));
    return EXIT.OK;
  }
  const lines = [
    `protocol: newstyle-fixed ${d.tls ? 'with TLS' : 'without TLS'}, ${d.structuredReplies ? 'using structured packets' : 'using simple packets'}`,
    `export="${d.export.exportName}":`,
    `\texport-size: ${d.export.size} (${humanSize(d.export.size)})`,
    ...(d.export.description ? [`\tdescription: ${d.export.description}`] : []),
    `\turi: ${uri}`,
    '\tcontexts:',
    ...d.contexts.map((c) => `\t\t${c}`),
    `\tis_rotational: ${f.rotational}`,
    `\tis_read_only: ${f.readOnly}`,
    `\tcan_cache: ${f.canCache}`,
    `\tcan_df: ${f.canDf}`,
    `\tcan_fast_zero: ${f.canFastZero}`,
    `\tcan_flush: ${f.canFlush}`,
    `\tcan_fua: ${f.canFua}`,
    `\tcan_multi_conn: ${f.canMultiConn}`,
    `\tcan_trim: ${f.canTrim}`,
    `\tcan_zero: ${f.canZero}`,
    `\tblock_size_minimum: ${bs.min}`,
    `\tblock_size_preferred: ${bs.preferred}`,
    `\tblock_size_maximum: ${bs.max}`,
  ];
  ctx.io.out(lines.join('\n'));
  return EXIT.OK;
}

async function list(ctx: CommandContext, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, options: { json: { type: 'boolean' } }, allowPositionals: true });
  if (positionals.length !== 1) throw new UsageError(`nbd list takes one URI\n\n${USAGE}`);
  const { NbdClient } = await nbd();
  const exports = await NbdClient.list(positionals[0]!, { timeoutMs: defaults(ctx).timeoutMs });
  if (values.json) ctx.io.out(JSON.stringify(exports, null, 2));
  else for (const e of exports) ctx.io.out(e.description ? `${e.name}\t${e.description}` : e.name);
  return EXIT.OK;
}

async function map(ctx: CommandContext, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args, options: { json: { type: 'boolean' }, context: { type: 'string' } }, allowPositionals: true,
  });
  if (positionals.length !== 1) throw new UsageError(`nbd map takes one URI\n\n${USAGE}`);
  const { CONTEXT_BASE_ALLOCATION, MapWriter, NbdClient } = await nbd();
  const context = values.context ?? CONTEXT_BASE_ALLOCATION;
  const client = await NbdClient.connect(positionals[0]!, { metaContexts: [context], timeoutMs: defaults(ctx).timeoutMs });
  try {
    // Map data can be hundreds of thousands of lines: written as bytes, with stdout's backpressure.
    let drained: Promise<void> | undefined;
    const w = new MapWriter(context, Boolean(values.json), (block) => {
      if (!process.stdout.write(block)) drained ??= new Promise((r) => process.stdout.once('drain', () => { drained = undefined; r(); }));
    });
    for await (const run of client.blockStatusRuns(context)) {
      w.run(run.offset, run.extents);
      if (drained) await drained;
    }
    w.end();
  } finally {
    await client.close();
  }
  return EXIT.OK;
}

async function openSource(spec: string, d: NbdDefaults, connections: number): Promise<Endpoint> {
  const { CONTEXT_BASE_ALLOCATION } = await nbd();
  const { FileEndpoint, NbdEndpoint } = await copyRoom();
  if (isUri(spec)) {
    return NbdEndpoint.open(spec, { metaContexts: [CONTEXT_BASE_ALLOCATION], connections, inflight: d.inflight, timeoutMs: d.timeoutMs })
      .catch(async (err: unknown) => {
        // An export without base:allocation can still be copied, just without skipping zeroes.
        if (!/does not offer metadata context|no structured replies/.test(String((err as Error).message))) throw err;
        return NbdEndpoint.open(spec, { connections, inflight: d.inflight, timeoutMs: d.timeoutMs });
      });
  }
  if (spec === 'null:') throw new UsageError('null: is a destination only');
  return FileEndpoint.open(spec);
}

async function openDestination(spec: string, size: number, d: NbdDefaults, connections: number, isZero: boolean): Promise<Endpoint> {
  const { FileEndpoint, NbdEndpoint, NullEndpoint } = await copyRoom();
  if (spec === 'null:') return new NullEndpoint(size);
  if (isUri(spec)) {
    const e = await NbdEndpoint.open(spec, { connections, inflight: d.inflight, timeoutMs: d.timeoutMs, zeroInitialized: isZero });
    if (e.size < size) {
      await e.close();
      throw new UsageError(`destination ${spec} has ${e.size} bytes, fewer than the source's ${size}`);
    }
    return e;
  }
  const st = await stat(spec).catch(() => undefined);
  if (st?.isBlockDevice()) return FileEndpoint.open(spec, { write: true });
  return FileEndpoint.open(spec, { create: { size } });
}

async function copy(ctx: CommandContext, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: {
      requests: { type: 'string' },
      'request-size': { type: 'string' },
      connections: { type: 'string' },
      'destination-is-zero': { type: 'boolean' },
      progress: { type: 'boolean' },
    },
    allowPositionals: true,
  });
  if (positionals.length !== 2) throw new UsageError(`nbd copy takes SRC and DST\n\n${USAGE}`);
  const { copyExtents, wholeDisk } = await copyRoom();
  const d = defaults(ctx);
  const inflight = positiveInt(values.requests, '--requests') ?? d.inflight;
  const requestSize = positiveInt(values['request-size'], '--request-size') ?? d.requestSize;
  const connections = positiveInt(values.connections, '--connections') ?? d.connections;
  const src = await openSource(positionals[0]!, { ...d, inflight }, connections);
  let dst: Endpoint | undefined;
  try {
    dst = await openDestination(positionals[1]!, src.size, { ...d, inflight }, connections, Boolean(values['destination-is-zero']));
    const showProgress = Boolean(values.progress) && ctx.io.isTty;
    let lastShown = 0;
    const p = await copyExtents(src, dst, wholeDisk(src), {
      requestSize,
      inflight,
      onProgress: showProgress
        ? (pr) => {
            const now = Date.now();
            if (now - lastShown < 200) return;
            lastShown = now;
            process.stderr.write(`\r${((100 * pr.done) / src.size).toFixed(1)}%`);
          }
        : undefined,
    });
    if (showProgress) process.stderr.write('\r100.0%\n');
    await dst.flush();
    ctx.io.err(`copied ${src.size} bytes: ${p.read} read, ${p.written} written, ${p.zeroed} zero`);
  } finally {
    await Promise.allSettled([src.close(), dst?.close()]);
  }
  return EXIT.OK;
}

export const nbdCommand: Command = {
  usage: USAGE,
  async run(ctx) {
    const [sub, ...rest] = ctx.argv;
    switch (sub) {
      case 'info': return info(ctx, rest);
      case 'list': return list(ctx, rest);
      case 'map': return map(ctx, rest);
      case 'copy': return copy(ctx, rest);
      default:
        throw new UsageError(`${sub ? `unknown nbd subcommand "${sub}"` : 'nbd needs a subcommand'}\n\n${USAGE}`);
    }
  },
};

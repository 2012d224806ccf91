// `virtcbt sync-target IMAGE --bind HOST[:PORT] --allow DN`: the receiving side of a sync, run in the
// foreground on the target host (no virtcbtd there) until SIGINT or SIGTERM.
import { mkdir } from 'node:fs/promises';
import { isIP } from 'node:net';
import { UsageError } from '../../util/errors.js';
import { createLogger } from '../../util/log.js';
import { parse, positional } from '../args.js';
import { EXIT, type Command, type CommandContext } from '../command.js';
import { formatBytes } from '../output.js';

const USAGE = `usage: virtcbt sync-target IMAGE --bind HOST[:PORT] --allow DN [--allow DN ...]
                           [--tls-dir DIR] [--format qcow2|raw] [--create SIZE] [--name NAME] [--json]

Runs on the host that keeps the second copy of a disk. Serves IMAGE as a writable NBD export over
TLS that only the named hypervisor identities may write to, and prints its URI (one JSON line with
--json) for \`virtcbt sync DOMAIN --disk DISK --to URI\` on the hypervisor. Serves until SIGINT or
SIGTERM, then closes the image cleanly and exits 0. No virtcbtd is needed on this host.

  --bind HOST[:PORT]  this host's address the hypervisor reaches ([V6ADDR]:PORT for IPv6); without
                      a port, any free port (named in the URI). Never a wildcard address.
  --allow DN          a client certificate subject let in, as \`virtcbt certs client\` prints it,
                      e.g. "CN=hv1" or "O=Example,CN=hv1"; repeat for several hypervisors.
  --tls-dir DIR       server credentials: ca-cert.pem (the CA of the hypervisors' certificates),
                      server-cert.pem (naming the --bind address), server-key.pem
                      (default: snapshot.remote.tlsDir, /etc/pki/virtcbt/server; see \`virtcbt certs\`)
  --format FMT        qcow2 or raw (default: detected; a created image is qcow2)
  --create SIZE       make IMAGE when it is missing (bytes, or with K, M, G, T: powers of 1024)
  --name NAME         export name (default: random). A fixed name and port keep the URI the same
                      across restarts: the hypervisor records the URI as the target's identity and
                      seeds a target it does not recognise in full.

Discards and zero writes from the sync free space in IMAGE. An image another process holds (a
running VM) is refused, naming the process.

Exit codes: 0 served and closed cleanly, 1 failure (or the server ended by itself), 2 bad usage.`;

const UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

export function parseSize(v: string): number {
  const m = /^(\d+)([KMGT]?)(?:i?B)?$/i.exec(v.trim());
  const n = m ? Number(m[1]) * UNITS[m[2]!.toUpperCase()]! : NaN;
  if (!Number.isSafeInteger(n) || n <= 0) throw new UsageError(`--create ${JSON.stringify(v)} is not a size`, { hint: 'Give bytes, or a number with K, M, G or T (e.g. 20G)' });
  return n;
}

/** HOST, HOST:PORT, [V6]:PORT or [V6]; a bare IPv6 address has no port. */
export function parseBind(v: string): { host: string; port?: number } {
  let host = v;
  let port: string | undefined;
  const br = /^\[([^\]]+)\](?::(\d*))?$/.exec(v);
  if (br) {
    host = br[1]!;
    port = br[2];
  } else if (isIP(v) !== 6 && v.includes(':')) {
    const i = v.lastIndexOf(':');
    host = v.slice(0, i);
    port = v.slice(i + 1);
  }
  if (host === '' || port === '') throw new UsageError(`--bind ${JSON.stringify(v)} is not HOST[:PORT]`, { hint: 'e.g. --bind 10.0.0.5:10809, or [fd00::5]:10809' });
  if (port === undefined) return { host };
  const p = Number(port);
  if (!/^\d+$/.test(port) || p > 65535) throw new UsageError(`--bind ${JSON.stringify(v)}: ${port} is not a TCP port`, { hint: 'Give 1-65535, or no port for any free one' });
  return { host, port: p };
}

function configured(ctx: CommandContext): { tlsDir: string; runDir: string } {
  try {
    const c = ctx.config();
    return { tlsDir: c.snapshot.remote.tlsDir, runDir: c.runDir };
  } catch {
    // A target host may have no virtcbt configuration at all: the defaults then.
    return { tlsDir: '/etc/pki/virtcbt/server', runDir: '/run/virtcbt' };
  }
}

export const syncTargetCommand: Command = {
  usage: USAGE,
  async run(ctx) {
    const { values, positionals } = parse(ctx.argv, {
      bind: { type: 'string' }, allow: { type: 'string', multiple: true }, 'tls-dir': { type: 'string' },
      format: { type: 'string' }, create: { type: 'string' }, name: { type: 'string' }, json: { type: 'boolean' },
    }, USAGE);
    const image = positional(positionals, 0, 'IMAGE', USAGE);
    if (positionals.length > 1) throw new UsageError(`sync-target takes one IMAGE\n\n${USAGE}`);
    if (values.bind === undefined) throw new UsageError(`missing --bind HOST[:PORT]\n\n${USAGE}`);
    if (!values.allow?.length) throw new UsageError(`missing --allow DN: name at least one hypervisor identity\n\n${USAGE}`);
    if (values.format !== undefined && values.format !== 'qcow2' && values.format !== 'raw') throw new UsageError(`--format ${values.format}: qcow2 or raw`);
    const json = Boolean(values.json);
    const defaults = configured(ctx);
    await mkdir(defaults.runDir, { recursive: true, mode: 0o700 });

    const { serveSyncTarget } = await import('../../sync/receiver.js');
    const stop = new AbortController();
    const onSignal = () => stop.abort(new Error('stopped by signal'));
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    try {
      const target = await serveSyncTarget({
        image,
        format: values.format as 'qcow2' | 'raw' | undefined,
        create: values.create === undefined ? undefined : { size: parseSize(values.create) },
        bind: parseBind(values.bind),
        tlsDir: values['tls-dir'] ?? defaults.tlsDir,
        identities: values.allow,
        runDir: defaults.runDir,
        exportName: values.name,
        signal: stop.signal,
        log: createLogger('info', (l) => ctx.io.err(l)),
      });
      if (json) {
        ctx.io.out(JSON.stringify({
          uri: target.uri, exportName: target.exportName, host: target.host, port: target.port, pid: target.pid,
          image: target.image, format: target.format, created: target.created, identities: values.allow,
        }));
      } else {
        ctx.io.err(`serving ${target.image} (${target.format}${target.created ? `, created, ${formatBytes(values.create ? parseSize(values.create) : 0)}` : ''}) writable for ${values.allow.join('; ')}`);
        ctx.io.out(target.uri);
        ctx.io.err(`on the hypervisor: virtcbt sync DOMAIN --disk DISK --to ${target.uri}`);
        ctx.io.err('stop with Ctrl-C or SIGTERM');
      }
      const end = await target.closed;
      // A Ctrl-C on a terminal reaches the storage daemon too (same process group): it quits
      // cleanly on SIGINT by itself, which is a stop asked for, not a failure.
      if (end === 'exited' && !stop.signal.aborted) {
        ctx.io.err(`virtcbt sync-target: qemu-storage-daemon serving ${target.image} ended by itself; check the image with \`qemu-img check\``);
        return EXIT.FAILED;
      }
      ctx.io.err(`closed ${target.image}`);
      return EXIT.OK;
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
  },
};

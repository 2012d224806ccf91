// `virtcbt sync status` and `virtcbt scan status`: the same shape of read-only listing, of every
// tracked domain or of one, from virtcbtd's GET /v1/RESOURCE or /v1/domains/DOMAIN/RESOURCE.
import { UsageError } from '../../util/errors.js';
import { domainArg, parse } from '../args.js';
import { EXIT, type CommandContext } from '../command.js';
import { callDaemon, daemonSocket } from '../daemon-client.js';
import { emit } from '../output.js';

export interface StatusListing<T> {
  /** "sync status": for messages. */
  command: string;
  resource: 'syncs' | 'scans';
  /** The reply's field holding the entries. */
  field: string;
  /** What to print when there are none. */
  empty: string;
  describe(entry: T): string[];
}

export async function statusListing<T>(ctx: CommandContext, argv: string[], usage: string, o: StatusListing<T>): Promise<number> {
  const { values, positionals } = parse(argv, { json: { type: 'boolean' } }, usage);
  if (positionals.length > 1) throw new UsageError(`${o.command} takes at most one DOMAIN\n\n${usage}`);
  const path = positionals.length === 1 ? `/v1/domains/${encodeURIComponent(domainArg(positionals, usage))}/${o.resource}` : `/v1/${o.resource}`;
  const r = await callDaemon<Record<string, T[]>>(daemonSocket(ctx.config()), 'GET', path);
  const entries = r[o.field] ?? [];
  emit(ctx.io, Boolean(values.json), r, () => (entries.length === 0 ? [o.empty] : entries.flatMap((e) => o.describe(e))));
  return EXIT.OK;
}

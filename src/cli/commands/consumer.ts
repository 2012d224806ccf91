// Consumers and passes: any backup application is a consumer with its own "changed since my
// last pass", the way backup vendors use VMware's CBT.
import type { ConsumerInfo, PassReply } from '../../daemon/api-types.js';
import { UsageError } from '../../util/errors.js';
import { domainArg, parse, positional } from '../args.js';
import { EXIT, type Command, type CommandContext } from '../command.js';
import { callDaemon, daemonSocket } from '../daemon-client.js';
import { emit } from '../output.js';
import { consumerRole, describeChanges } from './tracking.js';

const api = (ctx: CommandContext) => daemonSocket(ctx.config());
const enc = encodeURIComponent;

export const consumerCommand: Command = {
  usage: `usage: virtcbt consumer add DOMAIN NAME [--json]
       virtcbt consumer remove DOMAIN NAME [--json]
       virtcbt consumer list DOMAIN [--json]

NAME: letters, digits, '.', '_' and '-' (at most 64). A new consumer's first pass is full.`,
  async run(ctx) {
    const [verb, ...rest] = ctx.argv;
    const { values, positionals } = parse(rest, { json: { type: 'boolean' } }, this.usage);
    const json = Boolean(values.json);
    const domain = domainArg(positionals, this.usage);
    switch (verb) {
      case 'add': {
        const name = positional(positionals, 1, 'NAME', this.usage);
        const r = await callDaemon<ConsumerInfo>(api(ctx), 'POST', `/v1/domains/${enc(domain)}/consumers`, { body: { name } });
        emit(ctx.io, json, r, () => [`${domain}: consumer ${name} added; its first pass will be full`]);
        return EXIT.OK;
      }
      case 'remove': {
        const name = positional(positionals, 1, 'NAME', this.usage);
        const r = await callDaemon(api(ctx), 'DELETE', `/v1/domains/${enc(domain)}/consumers/${enc(name)}`);
        emit(ctx.io, json, r, () => [`${domain}: consumer ${name} removed`]);
        return EXIT.OK;
      }
      case 'list': {
        const r = await callDaemon<{ consumers: ConsumerInfo[] }>(api(ctx), 'GET', `/v1/domains/${enc(domain)}/consumers`);
        emit(ctx.io, json, r, () => r.consumers.length === 0 ? [`${domain}: no consumers`] :
          r.consumers.map((c) => `${c.name}\t${c.last === null ? 'never' : `generation ${c.last}`}${consumerRole(c.name)}`));
        return EXIT.OK;
      }
      default:
        throw new UsageError(`unknown consumer action '${verb ?? ''}'\n\n${this.usage}`);
    }
  },
};

export const passCommand: Command = {
  usage: `usage: virtcbt pass begin DOMAIN --consumer NAME [--export [--export-to IDENTITY]...] [--json]
       virtcbt pass commit DOMAIN --consumer NAME --pass ID [--json]
       virtcbt pass abort DOMAIN --consumer NAME --pass ID [--json]

begin folds the dirty bitmaps, starts a new generation and prints the pass id and the changes
to copy. With --export it also takes a point-in-time snapshot (the guest frozen around it, never
paused) and prints per disk a read-only NBD URI (unix socket) of the disks at that instant,
whose meta context qemu:dirty-bitmap:virtcbt-pass-ID marks the changes; the exports stay until
the pass is committed or aborted. With --export-to IDENTITY (a client certificate's subject DN,
e.g. "CN=backup-host"; repeatable) each disk is also exported for another host: NBD over TLS on
snapshot.remote.bind, read-only, only for those identities (remoteUri); at snapshot.remote.deadlineSeconds
the export ends and the pass is aborted. Commit only after the copied data is durable: it moves the consumer forward. A pass
left open is shown by \`virtcbt status\` and never moves the consumer.`,
  async run(ctx) {
    const [verb, ...rest] = ctx.argv;
    const { values, positionals } = parse(rest, {
      consumer: { type: 'string' },
      pass: { type: 'string' },
      export: { type: 'boolean' },
      'export-to': { type: 'string', multiple: true },
      json: { type: 'boolean' },
    }, this.usage);
    const json = Boolean(values.json);
    const domain = domainArg(positionals, this.usage);
    if (!values.consumer) throw new UsageError(`--consumer is required\n\n${this.usage}`);
    if (verb === 'begin') {
      const r = await callDaemon<PassReply>(api(ctx), 'POST', `/v1/domains/${enc(domain)}/passes`, {
        body: { consumer: values.consumer, export: Boolean(values.export) || Boolean(values['export-to']), exportTo: values['export-to'] },
      });
      emit(ctx.io, json, r, () => [`pass ${r.pass} (generation ${r.generation}) for ${values.consumer}`, ...describeChanges(r),
        ...(r.exports ?? []).map((e) => `${e.target}: ${e.uri}${e.remoteUri ? `\n${e.target} (other host): ${e.remoteUri}` : ''}`)]);
      return EXIT.OK;
    }
    if (verb === 'commit' || verb === 'abort') {
      const id = Number(values.pass);
      if (!Number.isInteger(id) || id <= 0) throw new UsageError(`--pass ID is required (a number from \`pass begin\`)\n\n${this.usage}`);
      const r = await callDaemon(api(ctx), 'POST', `/v1/domains/${enc(domain)}/passes/${id}/${verb}`, { body: { consumer: values.consumer } });
      emit(ctx.io, json, r, () => [`pass ${id} ${verb === 'commit' ? 'committed' : 'aborted'}`]);
      return EXIT.OK;
    }
    throw new UsageError(`unknown pass action '${verb ?? ''}'\n\n${this.usage}`);
  },
};

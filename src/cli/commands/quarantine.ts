// `virtcbt quarantine status|release`: which domains a scan found infected, what was done to
// them, and lifting it (links back exactly as they were, a suspended domain resumed).
import type { QuarantineRecord, QuarantineStatus } from '../../scan/quarantine.js';
import { UsageError } from '../../util/errors.js';
import { domainArg, parse } from '../args.js';
import { EXIT, type Command } from '../command.js';
import { callDaemon, daemonSocket } from '../daemon-client.js';
import { emit } from '../output.js';

const enc = encodeURIComponent;

function describe(s: QuarantineStatus): string[] {
  if (s.problem) return [`${s.domain}: quarantined (record damaged: ${s.problem})`];
  const r = s.record;
  if (!r) return [`${s.domain}: clean (never quarantined)`];
  const head = r.state === 'quarantined'
    ? `${s.domain}: QUARANTINED since ${r.since} (${r.action})`
    : `${s.domain}: released ${r.releasedAt ?? ''} (quarantined since ${r.since}, ${r.action})`;
  // Paths are JSON-quoted: a guest can name a file with a newline in it.
  const files = r.verdicts.flatMap((v) => v.infected.map((f) => `  ${JSON.stringify(f.path)}  ${f.signature}${f.disk ? `  ${f.disk}` : ''}  (${v.scanner ?? 'reported'} ${v.at})`));
  const failed = r.events.filter((e) => !e.ok).slice(-3).map((e) => `  ! ${e.what}: ${e.detail ?? 'failed'}`);
  return [head, ...files, ...failed];
}

export const quarantineCommand: Command = {
  usage: `usage: virtcbt quarantine status [DOMAIN] [--json]
       virtcbt quarantine release DOMAIN [--json]

status lists the domains found infected (or one domain): since when, the action taken
(scan.quarantine or scan.domains in the config: link-down, suspend, shutdown, none, command) and
every infected file reported since (path, signature, scanner). A file stays reported until the
domain is released. Members of daemon.socketGroup may read it.

release (as root) restores every network link to exactly its state before the quarantine, live
and in the persistent definition (an interface that was down stays down), resumes a domain the
quarantine suspended, and records the release. A domain that was shut down is not started.
Exit code 0 on success, 4 when the domain is not quarantined, 1 when the release is incomplete
(the domain stays quarantined; run it again).`,
  async run(ctx) {
    const [verb, ...rest] = ctx.argv;
    const { values, positionals } = parse(rest, { json: { type: 'boolean' } }, this.usage);
    const json = Boolean(values.json);
    const api = daemonSocket(ctx.config());
    if (verb === 'status') {
      if (positionals.length > 1) throw new UsageError(`quarantine status takes at most one DOMAIN\n\n${this.usage}`);
      if (positionals.length === 0) {
        const r = await callDaemon<{ domains: QuarantineStatus[] }>(api, 'GET', '/v1/quarantine');
        emit(ctx.io, json, r, () => (r.domains.length === 0 ? ['no domain has been quarantined'] : r.domains.flatMap(describe)));
        return EXIT.OK;
      }
      const domain = domainArg(positionals, this.usage);
      const r = await callDaemon<QuarantineStatus>(api, 'GET', `/v1/domains/${enc(domain)}/quarantine`);
      emit(ctx.io, json, r, () => describe(r));
      return EXIT.OK;
    }
    if (verb === 'release') {
      if (positionals.length !== 1) throw new UsageError(`quarantine release takes one DOMAIN\n\n${this.usage}`);
      const domain = domainArg(positionals, this.usage);
      const r = await callDaemon<QuarantineRecord>(api, 'POST', `/v1/domains/${enc(domain)}/quarantine/release`);
      emit(ctx.io, json, r, () => [`${domain}: released; links and run state restored as before the quarantine`]);
      return EXIT.OK;
    }
    throw new UsageError(`unknown quarantine action '${verb ?? ''}'\n\n${this.usage}`);
  },
};

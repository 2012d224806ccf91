// `virtcbt certs ca|server|client`: a CA and the TLS credentials a hypervisor, a sync target or a
// scanner host needs, in the layout QEMU's tls-creds-x509 reads, made by src/tls (certtool).
import { stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { isIP } from 'node:net';
import { join, resolve } from 'node:path';
import { UsageError } from '../../util/errors.js';
import { parse, positional } from '../args.js';
import { EXIT, type Command } from '../command.js';

const USAGE = `usage: virtcbt certs ca DIR [--cn NAME] [--days N] [--json]
       virtcbt certs server DIR --ca CADIR --cn NAME [--address IP|DNS ...] [--days N] [--json]
       virtcbt certs client DIR --ca CADIR --cn NAME [--org ORG] [--days N] [--json]
       virtcbt certs identity CERT [--json]

Makes TLS credentials with certtool (gnutls-bin) in the layout QEMU's tls-creds-x509 and libnbd's
tls-certificates=DIR read. Private keys are mode 0600; nothing is ever overwritten (a file already
there is an error and nothing is written). Prints the certificate's subject in the form QEMU's
tls-authz compares: the identity to give to --allow (sync-target), --export-to (pass begin) or a
scanner's configuration.

ca      DIR gets ca-cert.pem and ca-key.pem (keep ca-key.pem on one trusted machine).
        --cn NAME   the CA's name (default "virtcbt CA on HOSTNAME")
server  DIR gets ca-cert.pem (CADIR's: the CA clients must come from), server-cert.pem,
        server-key.pem. For a host that serves: a hypervisor exporting to a scanner
        (snapshot.remote.tlsDir), a sync target (--tls-dir).
        --address   the IP address or DNS name clients connect to (clients check it); repeat for
                    several (default: the CN)
client  DIR gets ca-cert.pem (the CA of the servers), client-cert.pem, client-key.pem. For a host
        that connects: a hypervisor syncing to a target (sync.tlsCertificates), a scanner.
        --org ORG   an organization in the subject (the identity becomes "O=ORG,CN=NAME")
        One DIR may hold a host's server and client credentials (their ca-cert.pem must then be
        the same CA), as QEMU's layout allows.
identity  prints the identity of an existing certificate (e.g. /etc/pki/qemu/client-cert.pem of
        libvirt's PKI, whose directories have this same layout).
--days N    validity (default 365)

Exit codes: 0 made, 1 certtool failed, 2 bad usage or a file already there (nothing written).`;

function days(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n <= 0) throw new UsageError(`--days ${JSON.stringify(v)} is not a positive whole number`);
  return n;
}

async function loadCa(dir: string | undefined) {
  if (dir === undefined) throw new UsageError(`missing --ca CADIR (the directory \`virtcbt certs ca\` made)\n\n${USAGE}`);
  const ca = { dir, cert: join(dir, 'ca-cert.pem'), key: join(dir, 'ca-key.pem') };
  for (const f of [ca.cert, ca.key]) {
    if (!(await stat(f).then((s) => s.isFile(), () => false))) {
      throw new UsageError(`${f} is missing: --ca names the directory with the CA's certificate and key`, { hint: 'Make one with `virtcbt certs ca DIR`, or name the directory holding ca-cert.pem and ca-key.pem' });
    }
  }
  return ca;
}

export const certsCommand: Command = {
  usage: USAGE,
  async run(ctx) {
    const { values, positionals } = parse(ctx.argv, {
      cn: { type: 'string' }, ca: { type: 'string' }, address: { type: 'string', multiple: true },
      org: { type: 'string' }, days: { type: 'string' }, json: { type: 'boolean' },
    }, USAGE);
    const kind = positionals[0];
    if (kind === 'identity') {
      if (positionals.length !== 2) throw new UsageError(`certs identity takes one certificate file\n\n${USAGE}`);
      const file = resolve(positionals[1]!);
      if (!(await stat(file).then((st) => st.isFile(), () => false))) throw new UsageError(`${file} is not a certificate file`, { hint: 'Name a PEM certificate, e.g. client-cert.pem' });
      const { certificateSubject } = await import('../../tls/index.js');
      const identity = await certificateSubject(file);
      ctx.io.out(values.json ? JSON.stringify({ kind, file, identity }) : identity);
      return EXIT.OK;
    }
    if (kind !== 'ca' && kind !== 'server' && kind !== 'client') {
      throw new UsageError(`${kind === undefined ? 'missing' : `unknown: ${JSON.stringify(kind)},`} what to make: ca, server or client (or identity of a certificate)\n\n${USAGE}`);
    }
    const dir = resolve(positional(positionals, 1, 'DIR', USAGE));
    if (positionals.length > 2) throw new UsageError(`certs ${kind} takes one DIR\n\n${USAGE}`);
    const only = (opt: string, kinds: string[]) => {
      if ((values as Record<string, unknown>)[opt] !== undefined && !kinds.includes(kind)) throw new UsageError(`--${opt} is not an option of certs ${kind}\n\n${USAGE}`);
    };
    only('ca', ['server', 'client']);
    only('address', ['server']);
    only('org', ['client']);
    const { certificateSubject, createCa, issueClientCredentials, issueServerCredentials } = await import('../../tls/index.js');
    let files: Record<string, string>;
    let certFile: string;
    if (kind === 'ca') {
      const ca = await createCa(dir, { cn: values.cn ?? `virtcbt CA on ${hostname()}`, days: days(values.days) });
      files = { cert: ca.cert, key: ca.key };
      certFile = ca.cert;
    } else {
      if (values.cn === undefined) throw new UsageError(`missing --cn NAME (the ${kind === 'server' ? 'host\'s name' : 'identity clients are let in by'})\n\n${USAGE}`);
      const ca = await loadCa(values.ca === undefined ? undefined : resolve(values.ca));
      const base = kind === 'server' ? 'server' : 'client';
      if (kind === 'server') {
        const addresses = values.address?.length ? values.address : [values.cn];
        await issueServerCredentials(ca, dir, {
          cn: values.cn, days: days(values.days),
          ipAddresses: addresses.filter((a) => isIP(a) !== 0), dnsNames: addresses.filter((a) => isIP(a) === 0),
        });
      } else {
        await issueClientCredentials(ca, dir, { cn: values.cn, organization: values.org, days: days(values.days) });
      }
      files = { ca: join(dir, 'ca-cert.pem'), cert: join(dir, `${base}-cert.pem`), key: join(dir, `${base}-key.pem`) };
      certFile = files.cert!;
    }
    const identity = await certificateSubject(certFile);
    if (values.json) {
      ctx.io.out(JSON.stringify({ kind, dir, files, identity }));
      return EXIT.OK;
    }
    ctx.io.out(identity);
    ctx.io.err(`made ${Object.values(files).join(', ')}`);
    if (kind === 'client') ctx.io.err(`let this host in with --allow '${identity}' (sync-target) or --export-to '${identity}' (pass begin)`);
    if (kind === 'ca') ctx.io.err(`next: virtcbt certs server|client DIR --ca ${dir} --cn NAME; keep ${files.key} private`);
    return EXIT.OK;
  },
};

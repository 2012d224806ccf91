// NBD URIs as libnbd writes them: nbd://HOST[:PORT]/EXPORT, nbds://, nbd+unix:///EXPORT?socket=PATH, nbds+unix://.
import { UsageError } from '../util/errors.js';

/** IANA port for NBD. */
export const NBD_DEFAULT_PORT = 10809;

export type NbdAddress = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

export interface NbdTarget {
  address: NbdAddress;
  exportName: string;
  /** TLS was asked for (nbds…): the client will not send a byte of data in clear. */
  tls: boolean;
  /** Directory with ca-cert.pem, client-cert.pem, client-key.pem (as QEMU and libnbd lay it out). */
  tlsCertificates?: string;
  /** Verify the server's certificate (default true). */
  tlsVerifyPeer: boolean;
  /** Name to check the server certificate against; defaults to the host for TCP, none for unix sockets. */
  tlsHostname?: string;
}

const SCHEMES: Record<string, { tls: boolean; unix: boolean }> = {
  'nbd:': { tls: false, unix: false },
  'nbds:': { tls: true, unix: false },
  'nbd+unix:': { tls: false, unix: true },
  'nbds+unix:': { tls: true, unix: true },
};

const KNOWN_QUERY = new Set(['socket', 'tls-certificates', 'tls-verify-peer', 'tls-hostname']);

function bad(uri: string, why: string): UsageError {
  return new UsageError(`bad NBD URI "${uri}": ${why}`, {
    hint: 'write it as nbd+unix:///EXPORT?socket=PATH or nbd://HOST:PORT/EXPORT (nbds… for TLS)',
  });
}

export function parseNbdUri(uri: string): NbdTarget {
  let u: URL;
  try {
    u = new URL(uri);
  } catch {
    throw bad(uri, 'not a URI');
  }
  const scheme = SCHEMES[u.protocol];
  if (!scheme) throw bad(uri, `unknown scheme "${u.protocol}"`);
  for (const k of u.searchParams.keys()) if (!KNOWN_QUERY.has(k)) throw bad(uri, `unknown parameter "${k}"`);
  if (u.username || u.password) throw bad(uri, 'user names and passwords (TLS-PSK) are not supported');
  // The export name is the path without its leading slash, URL-decoded (libnbd's rule).
  const exportName = decodeURIComponent(u.pathname.replace(/^\//, ''));
  let address: NbdAddress;
  if (scheme.unix) {
    const path = u.searchParams.get('socket');
    if (!path) throw bad(uri, 'missing ?socket=PATH');
    if (u.host) throw bad(uri, 'a unix socket URI has no host (three slashes: nbd+unix:///EXPORT?socket=PATH)');
    address = { kind: 'unix', path };
  } else {
    if (u.searchParams.has('socket')) throw bad(uri, '?socket= belongs to nbd+unix:// URIs');
    const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
    if (!host) throw bad(uri, 'missing host');
    const port = u.port ? Number(u.port) : NBD_DEFAULT_PORT;
    address = { kind: 'tcp', host, port };
  }
  const tlsCertificates = u.searchParams.get('tls-certificates') ?? undefined;
  const verify = u.searchParams.get('tls-verify-peer');
  if (verify !== null && !['true', 'false', '1', '0', 'yes', 'no', 'on', 'off'].includes(verify)) {
    throw bad(uri, `tls-verify-peer must be true or false, not "${verify}"`);
  }
  if (!scheme.tls && (tlsCertificates || verify !== null || u.searchParams.has('tls-hostname'))) {
    throw bad(uri, 'TLS parameters need an nbds:// or nbds+unix:// URI');
  }
  return {
    address,
    exportName,
    tls: scheme.tls,
    tlsCertificates,
    tlsVerifyPeer: verify === null || ['true', '1', 'yes', 'on'].includes(verify),
    tlsHostname: u.searchParams.get('tls-hostname') ?? undefined,
  };
}

/** Formats a target back into a URI (what `nbd info` prints). */
export function formatNbdUri(t: NbdTarget): string {
  const scheme = (t.tls ? 'nbds' : 'nbd') + (t.address.kind === 'unix' ? '+unix' : '');
  const name = t.exportName.split('/').map(encodeURIComponent).join('/');
  const q = new URLSearchParams();
  if (t.address.kind === 'unix') q.set('socket', t.address.path);
  if (t.tlsCertificates) q.set('tls-certificates', t.tlsCertificates);
  if (t.tls && !t.tlsVerifyPeer) q.set('tls-verify-peer', 'false');
  if (t.tlsHostname) q.set('tls-hostname', t.tlsHostname);
  const qs = [...q].map(([k, v]) => `${k}=${encodeURIComponent(v).replace(/%2F/g, '/')}`).join('&');
  const host = t.address.kind === 'tcp'
    ? (t.address.host.includes(':') ? `[${t.address.host}]` : t.address.host) + (t.address.port === NBD_DEFAULT_PORT ? '' : `:${t.address.port}`)
    : '';
  return `${scheme}://${host}/${name}${qs ? '?' + qs : ''}`;
}

/** Where the target is, for messages. */
export function describeAddress(a: NbdAddress): string {
  return a.kind === 'unix' ? `unix socket ${a.path}` : `${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
}

// TLS for NBD (NBD_OPT_STARTTLS): x509 credentials laid out as QEMU and libnbd expect, and the upgrade.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tls from 'node:tls';
import type { Socket } from 'node:net';
import { NbdProtocolError } from './errors.js';
import type { NbdTarget } from './uri.js';

export interface TlsCredentials {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

/** Reads ca-cert.pem, client-cert.pem, client-key.pem from `dir` (each optional except as a pair). */
export function loadCredentials(dir: string): TlsCredentials {
  const read = (f: string) => (existsSync(join(dir, f)) ? readFileSync(join(dir, f)) : undefined);
  const creds: TlsCredentials = { ca: read('ca-cert.pem'), cert: read('client-cert.pem'), key: read('client-key.pem') };
  if (!creds.ca && !creds.cert) {
    throw new NbdProtocolError(`TLS certificate directory ${dir} holds neither ca-cert.pem nor client-cert.pem`, {
      hint: 'put ca-cert.pem (and client-cert.pem + client-key.pem for mutual TLS) there, as for qemu --object tls-creds-x509',
    });
  }
  if (Boolean(creds.cert) !== Boolean(creds.key)) {
    throw new NbdProtocolError(`TLS certificate directory ${dir} has ${creds.cert ? 'client-cert.pem without client-key.pem' : 'client-key.pem without client-cert.pem'}`);
  }
  return creds;
}

/** Wraps `socket` in TLS after STARTTLS was acknowledged; resolves once the server's certificate checked out. */
export function upgradeSocket(socket: Socket, target: NbdTarget, what: string, signal?: AbortSignal): Promise<tls.TLSSocket> {
  const creds = target.tlsCertificates ? loadCredentials(target.tlsCertificates) : {};
  const servername = target.tlsHostname ?? (target.address.kind === 'tcp' ? target.address.host : undefined);
  return new Promise((resolve, reject) => {
    const t = tls.connect({
      socket,
      ca: creds.ca,
      cert: creds.cert,
      key: creds.key,
      rejectUnauthorized: target.tlsVerifyPeer,
      // SNI must not be an IP address; the certificate check below still uses the name.
      servername: servername && !/^[\d.]+$|:/.test(servername) ? servername : undefined,
      // A unix socket has no host to check; the CA still has to have signed the server's certificate.
      checkServerIdentity: (host, cert) =>
        servername === undefined ? undefined : tls.checkServerIdentity(servername, cert),
    });
    const onError = (err: Error) => {
      cleanup();
      t.destroy();
      reject(new NbdProtocolError(`TLS handshake with ${what} failed: ${err.message}`, {
        cause: err,
        hint: 'check that ca-cert.pem signed the server certificate, the certificate names the host, and the server accepts our client certificate',
      }));
    };
    const onAbort = () => onError(signal?.reason instanceof Error ? signal.reason : new Error('aborted'));
    const cleanup = () => {
      t.off('error', onError);
      signal?.removeEventListener('abort', onAbort);
    };
    t.once('error', onError);
    signal?.addEventListener('abort', onAbort, { once: true });
    t.once('secureConnect', () => {
      cleanup();
      resolve(t);
    });
  });
}

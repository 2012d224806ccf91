// Test helper: a throwaway x509 CA with server and client certificates, made by src/tls (certtool), laid out as QEMU and libnbd expect.
import { createCa, issueClientCredentials, issueServerCredentials, type CertAuthority } from '../../src/tls/index.js';

export type Ca = CertAuthority;

export async function makeCa(dir: string, cn: string): Promise<Ca> {
  return createCa(dir, { cn, days: 2 });
}

/** A directory with ca-cert.pem + server-cert.pem + server-key.pem (qemu tls-creds-x509 endpoint=server). */
export async function makeServerDir(ca: Ca, dir: string, trustCa: Ca = ca, addresses: string[] = ['127.0.0.1']): Promise<string> {
  return issueServerCredentials(ca, dir, { cn: 'localhost', dnsNames: ['localhost'], ipAddresses: addresses, days: 2, trust: trustCa });
}

/** A directory with ca-cert.pem + client-cert.pem + client-key.pem (what ?tls-certificates=DIR points at). */
export async function makeClientDir(ca: Ca, dir: string, trustCa: Ca = ca, cn = 'client', organization?: string): Promise<string> {
  return issueClientCredentials(ca, dir, { cn, organization, days: 2, trust: trustCa });
}

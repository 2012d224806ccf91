// A small x509 PKI with certtool (gnutls-bin): a CA, and server and client credentials laid out
// as QEMU's tls-creds-x509 and libnbd's tls-certificates=DIR read them, private keys mode 0600.
import { lstat, mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { UsageError, VirtcbtError } from '../util/errors.js';

/** The files of a server directory (QEMU tls-creds-x509 endpoint=server, dir=DIR). */
export const SERVER_FILES = { ca: 'ca-cert.pem', cert: 'server-cert.pem', key: 'server-key.pem' } as const;
/** The files of a client directory (QEMU endpoint=client, or nbds://…?tls-certificates=DIR). */
export const CLIENT_FILES = { ca: 'ca-cert.pem', cert: 'client-cert.pem', key: 'client-key.pem' } as const;

export interface CertAuthority {
  dir: string;
  cert: string;
  key: string;
}

export interface IssueOptions {
  /** Common name: the identity a client is admitted by (see certificateSubject). */
  cn: string;
  /** Organization (O=) of the subject, if any. */
  organization?: string;
  /** Days the certificate is valid (default 365). */
  days?: number;
  /** CA certificate put in the directory as ca-cert.pem, the one the peer is checked against (default: the issuing CA's). */
  trust?: CertAuthority;
}

export interface ServerIssueOptions extends IssueOptions {
  /** Names and addresses clients connect to: a client checks the server's certificate against the host of its URI. */
  dnsNames?: string[];
  ipAddresses?: string[];
}

const KEY_MODE = 0o600;

/** A template value: certtool reads quoted strings; a quote or line break would change the template. */
function quoted(field: string, v: string): string {
  if (v === '' || /["\\\n\r\0]/.test(v)) throw new UsageError(`certificate ${field} ${JSON.stringify(v)} is empty or holds a quote, backslash or line break`, { hint: `Choose another ${field}` });
  return `"${v}"`;
}

async function certtool(args: string[], what: string): Promise<string> {
  const r = await execa('certtool', args, { reject: false, encoding: 'utf8' });
  if (r.failed) {
    const missing = (r as { code?: string }).code === 'ENOENT';
    throw new VirtcbtError(`certtool could not ${what}: ${missing ? 'certtool is not installed' : String(r.stderr || r.stdout || r.message || 'failed').trim().split('\n').pop()}`, {
      hint: missing ? 'Install gnutls-bin (scripts/setup.sh does)' : 'Check the directory is writable and the CA files are readable',
    });
  }
  return r.stdout;
}

/** Writes a file that must not exist yet (never overwrites credentials someone relies on). */
async function writeNew(path: string, data: string, mode = 0o644): Promise<void> {
  try {
    await writeFile(path, data, { flag: 'wx', mode });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new UsageError(`${path} already exists`, { hint: 'Choose an empty directory, or remove the old credentials first; nothing was overwritten' });
    }
    throw err;
  }
}

/** A new private key, written mode 0600 from certtool's output (never readable by others, not even for a moment). */
async function newKey(path: string): Promise<void> {
  // ECDSA keys take milliseconds to make where RSA keys take seconds.
  const pem = await certtool(['--generate-privkey', '--key-type=ecdsa'], `make a key for ${path}`);
  await writeNew(path, pem, KEY_MODE);
}

async function withTemplate<T>(lines: string[], fn: (template: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'virtcbt-pki-'));
  try {
    const t = join(dir, 'template');
    await writeFile(t, lines.join('\n') + '\n', { mode: 0o600 });
    return await fn(t);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function days(n: number | undefined): string {
  const d = n ?? 365;
  if (!Number.isInteger(d) || d <= 0) throw new UsageError(`certificate validity ${d} days is not a positive whole number`, { hint: 'Give days as a positive whole number' });
  return `expiration_days = ${d}`;
}

/** A self-signed CA in `dir`: ca-cert.pem and ca-key.pem (0600). */
export async function createCa(dir: string, o: { cn: string; days?: number }): Promise<CertAuthority> {
  const template = [`cn = ${quoted('common name', o.cn)}`, 'ca', 'cert_signing_key', days(o.days)];
  await mkdir(dir, { recursive: true });
  const ca: CertAuthority = { dir, cert: join(dir, 'ca-cert.pem'), key: join(dir, 'ca-key.pem') };
  await newKey(ca.key);
  const pem = await withTemplate(template, (t) =>
    certtool(['--generate-self-signed', '--load-privkey', ca.key, '--template', t], `make the CA certificate in ${dir}`));
  await writeNew(ca.cert, pem);
  return ca;
}

async function issue(ca: CertAuthority, dir: string, files: typeof SERVER_FILES | typeof CLIENT_FILES, template: string[], trust: CertAuthority): Promise<string> {
  await mkdir(dir, { recursive: true });
  const key = join(dir, files.key);
  const cert = join(dir, files.cert);
  const caFile = join(dir, files.ca);
  const trustPem = await readFile(trust.cert, 'utf8');
  // Everything is checked before anything is written: a refusal leaves no half-made credentials.
  // One directory may hold a host's server and client credentials (QEMU reads both from one
  // tls-creds-x509 dir): its ca-cert.pem is then shared, and must be the same CA.
  for (const f of [key, cert]) {
    if (await lstat(f).then(() => true, () => false)) {
      throw new UsageError(`${f} already exists`, { hint: 'Choose an empty directory, or remove the old credentials first; nothing was overwritten' });
    }
  }
  const presentCa = await readFile(caFile, 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (presentCa !== undefined && presentCa !== trustPem) {
    throw new UsageError(`${caFile} already exists and holds another CA than ${trust.cert}`, { hint: 'Use another directory for credentials of another CA; nothing was overwritten' });
  }
  await newKey(key);
  let wroteCert = false;
  try {
    const pem = await withTemplate(template, (t) => certtool(['--generate-certificate', '--load-privkey', key,
      '--load-ca-certificate', ca.cert, '--load-ca-privkey', ca.key, '--template', t], `sign a certificate for ${dir}`));
    await writeNew(cert, pem);
    wroteCert = true;
    if (presentCa === undefined) await writeNew(caFile, trustPem);
  } catch (err) {
    // A key without its certificate (the CA could not sign) would block the next attempt.
    await rm(key, { force: true });
    if (wroteCert) await rm(cert, { force: true });
    throw err;
  }
  return dir;
}

function subject(o: IssueOptions): string[] {
  return [`cn = ${quoted('common name', o.cn)}`, ...(o.organization === undefined ? [] : [`organization = ${quoted('organization', o.organization)}`])];
}

/** Server credentials in `dir` (ca-cert.pem, server-cert.pem, server-key.pem) signed by `ca`. */
export async function issueServerCredentials(ca: CertAuthority, dir: string, o: ServerIssueOptions): Promise<string> {
  const template = [...subject(o),
    ...(o.dnsNames ?? []).map((n) => `dns_name = ${quoted('DNS name', n)}`),
    ...(o.ipAddresses ?? []).map((a) => `ip_address = ${quoted('IP address', a)}`),
    'tls_www_server', 'encryption_key', 'signing_key', days(o.days)];
  return issue(ca, dir, SERVER_FILES, template, o.trust ?? ca);
}

/** Client credentials in `dir` (ca-cert.pem, client-cert.pem, client-key.pem) signed by `ca`. */
export async function issueClientCredentials(ca: CertAuthority, dir: string, o: IssueOptions): Promise<string> {
  const template = [...subject(o), 'tls_www_client', 'encryption_key', 'signing_key', days(o.days)];
  return issue(ca, dir, CLIENT_FILES, template, o.trust ?? ca);
}

/**
 * The certificate's subject distinguished name as QEMU's tls-authz compares it: what an admin lists
 * as an allowed identity. QEMU takes gnutls's legacy form, the attributes in the certificate's own
 * order ("O=Example,CN=scanner", as its "authz check for ... is denied" message prints it), while
 * certtool prints RFC 4514's reversed order ("CN=scanner,O=Example"): the names are turned round here.
 */
export async function certificateSubject(certPath: string): Promise<string> {
  const out = await certtool(['--certificate-info', '--infile', certPath], `read ${certPath}`);
  const m = /^\s*Subject: (.*)$/m.exec(out);
  if (!m) throw new VirtcbtError(`certtool printed no subject for ${certPath}`, { hint: 'Check the file is a PEM certificate' });
  return splitRdns(m[1]!.trim()).reverse().join(',');
}

/** The relative names of an RFC 4514 string, split at commas that are not escaped ("\,"). */
function splitRdns(dn: string): string[] {
  const out: string[] = [];
  let cur = '';
  for (let i = 0; i < dn.length; i++) {
    const c = dn[i]!;
    if (c === '\\' && i + 1 < dn.length) {
      cur += c + dn[++i]!;
    } else if (c === ',') {
      out.push(cur);
      cur = '';
    } else {
      cur += c;
    }
  }
  out.push(cur);
  return out;
}

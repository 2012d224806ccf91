// Test helper: a throwaway x509 CA with server and client certificates made by certtool, laid out as QEMU and libnbd expect.
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';

async function key(path: string): Promise<void> {
  // ECDSA keys take milliseconds to make where RSA takes seconds.
  await execa('certtool', ['--generate-privkey', '--key-type=ecdsa', '--outfile', path]);
}

export interface Ca {
  dir: string;
  cert: string;
  key: string;
}

export async function makeCa(dir: string, cn: string): Promise<Ca> {
  mkdirSync(dir, { recursive: true });
  const ca: Ca = { dir, cert: join(dir, 'ca-cert.pem'), key: join(dir, 'ca-key.pem') };
  await key(ca.key);
  writeFileSync(join(dir, 'ca.info'), `cn = ${cn}\nca\ncert_signing_key\nexpiration_days = 2\n`);
  await execa('certtool', ['--generate-self-signed', '--load-privkey', ca.key, '--template', join(dir, 'ca.info'), '--outfile', ca.cert]);
  return ca;
}

/** A directory with ca-cert.pem + server-cert.pem + server-key.pem (qemu tls-creds-x509 endpoint=server). */
export async function makeServerDir(ca: Ca, dir: string, trustCa: Ca = ca): Promise<string> {
  mkdirSync(dir, { recursive: true });
  await key(join(dir, 'server-key.pem'));
  writeFileSync(join(dir, 's.info'), 'cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n');
  await sign(ca, join(dir, 'server-key.pem'), join(dir, 's.info'), join(dir, 'server-cert.pem'));
  copyFileSync(trustCa.cert, join(dir, 'ca-cert.pem'));
  return dir;
}

/** A directory with ca-cert.pem + client-cert.pem + client-key.pem (what ?tls-certificates=DIR points at). */
export async function makeClientDir(ca: Ca, dir: string, trustCa: Ca = ca, cn = 'client'): Promise<string> {
  mkdirSync(dir, { recursive: true });
  await key(join(dir, 'client-key.pem'));
  writeFileSync(join(dir, 'c.info'), `cn = ${cn}\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 2\n`);
  await sign(ca, join(dir, 'client-key.pem'), join(dir, 'c.info'), join(dir, 'client-cert.pem'));
  copyFileSync(trustCa.cert, join(dir, 'ca-cert.pem'));
  return dir;
}

async function sign(ca: Ca, keyPath: string, template: string, out: string): Promise<void> {
  await execa('certtool', ['--generate-certificate', '--load-privkey', keyPath, '--load-ca-certificate', ca.cert,
    '--load-ca-privkey', ca.key, '--template', template, '--outfile', out]);
}

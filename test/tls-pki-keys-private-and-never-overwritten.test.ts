// src/tls makes credentials in the layout QEMU and libnbd read, private keys readable by the owner
// only, and never overwrites credentials already there; a bad name changes nothing.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { certificateSubject, createCa, issueClientCredentials, issueServerCredentials } from '../src/tls/index.js';
import { UsageError } from '../src/util/errors.js';
import { onCleanup, useCleanup } from './support/cleanup.js';
import { tempDir } from './support/nbd-servers.js';

useCleanup();

describe('src/tls credentials', () => {
  it('lays out CA, server and client files with keys mode 0600, and refuses to overwrite them', async () => {
    const t = tempDir('pki');
    onCleanup(() => t.remove());
    const ca = await createCa(join(t.path, 'ca'), { cn: 'test CA', days: 1 });
    const server = await issueServerCredentials(ca, join(t.path, 'server'), { cn: 'host1', dnsNames: ['host1'], ipAddresses: ['10.0.0.1'], days: 1 });
    const client = await issueClientCredentials(ca, join(t.path, 'client'), { cn: 'scanner', organization: 'Example Org', days: 1 });
    expect(readdirSync(ca.dir).sort()).toEqual(['ca-cert.pem', 'ca-key.pem']);
    expect(readdirSync(server).sort()).toEqual(['ca-cert.pem', 'server-cert.pem', 'server-key.pem']);
    expect(readdirSync(client).sort()).toEqual(['ca-cert.pem', 'client-cert.pem', 'client-key.pem']);
    for (const key of [ca.key, join(server, 'server-key.pem'), join(client, 'client-key.pem')]) {
      expect(statSync(key).mode & 0o777, key).toBe(0o600);
    }
    // The order QEMU's tls-authz compares (the certificate's), not certtool's RFC 4514 order.
    expect(await certificateSubject(join(client, 'client-cert.pem'))).toBe('O=Example Org,CN=scanner');
    expect(await certificateSubject(join(server, 'server-cert.pem'))).toBe('CN=host1');

    const keyBefore = readFileSync(ca.key);
    await expect(createCa(ca.dir, { cn: 'another CA' })).rejects.toThrow(UsageError);
    expect(readFileSync(ca.key)).toEqual(keyBefore);
    await expect(issueClientCredentials(ca, client, { cn: 'other' })).rejects.toThrow(/already exists/);
  });

  it('refuses a name that would change the certificate template, writing nothing', async () => {
    const t = tempDir('pki-bad');
    onCleanup(() => t.remove());
    const ca = await createCa(join(t.path, 'ca'), { cn: 'test CA', days: 1 });
    await expect(issueClientCredentials(ca, join(t.path, 'c'), { cn: 'x"\nca' })).rejects.toThrow(UsageError);
    await expect(createCa(join(t.path, 'ca2'), { cn: '' })).rejects.toThrow(UsageError);
    expect(readdirSync(t.path)).toEqual(['ca']);
  });
});

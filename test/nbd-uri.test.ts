// NBD URIs as libnbd writes them parse into targets and format back; bad ones are usage errors that say why.
import { describe, expect, it } from 'vitest';
import { formatNbdUri, parseNbdUri } from '../src/nbd/index.js';
import { UsageError } from '../src/util/errors.js';

describe('NBD URIs', () => {
  it('parses the four schemes', () => {
    expect(parseNbdUri('nbd+unix:///disk?socket=/run/x.sock')).toMatchObject({
      address: { kind: 'unix', path: '/run/x.sock' }, exportName: 'disk', tls: false,
    });
    expect(parseNbdUri('nbd://example.org:10900/a%20b')).toMatchObject({
      address: { kind: 'tcp', host: 'example.org', port: 10900 }, exportName: 'a b', tls: false,
    });
    expect(parseNbdUri('nbds://[::1]/vda?tls-certificates=/etc/pki/x')).toMatchObject({
      address: { kind: 'tcp', host: '::1', port: 10809 }, exportName: 'vda', tls: true, tlsCertificates: '/etc/pki/x', tlsVerifyPeer: true,
    });
    expect(parseNbdUri('nbds+unix:///?socket=/s&tls-certificates=/d&tls-verify-peer=false')).toMatchObject({
      address: { kind: 'unix', path: '/s' }, exportName: '', tls: true, tlsVerifyPeer: false,
    });
  });

  it('formats back to an equivalent URI', () => {
    for (const u of ['nbd+unix:///disk?socket=/run/x.sock', 'nbds://h.example:1234/e?tls-certificates=/d', 'nbd://[::1]/', 'nbd://h/a%20b']) {
      expect(parseNbdUri(formatNbdUri(parseNbdUri(u)))).toEqual(parseNbdUri(u));
    }
    expect(formatNbdUri(parseNbdUri('nbd+unix:///disk?socket=/run/x.sock'))).toBe('nbd+unix:///disk?socket=/run/x.sock');
  });

  const bad: Array<[string, RegExp]> = [
    ['http://x/', /unknown scheme/],
    ['nbd+unix:///disk', /missing \?socket=PATH/],
    ['nbd+unix://host/disk?socket=/s', /has no host/],
    ['nbd:///disk', /missing host/],
    ['nbd://h/d?socket=/s', /belongs to nbd\+unix/],
    ['nbd://h/d?tls-certificates=/x', /need an nbds/],
    ['nbds://h/d?tls-verify-peer=maybe', /true or false/],
    ['nbd://h/d?frobnicate=1', /unknown parameter "frobnicate"/],
    ['not a uri', /not a URI/],
  ];
  for (const [u, re] of bad) {
    it(`refuses ${u}`, () => {
      expect(() => parseNbdUri(u)).toThrow(UsageError);
      expect(() => parseNbdUri(u)).toThrow(re);
    });
  }
});

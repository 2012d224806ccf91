// Configuration: defaults, file overrides, environment overrides, and clear errors for bad input.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import convict from 'convict';
import { schema } from '../config/schema.js';
import { loadConfig, schemaDefaults } from '../src/config/index.js';
import { UsageError } from '../src/util/errors.js';

const dir = mkdtempSync(join(tmpdir(), 'virtcbt-config-'));
const file = (name: string, text: string) => { const p = join(dir, name); writeFileSync(p, text); return p; };

describe('config', () => {
  it('has sane defaults', () => {
    const c = loadConfig({ env: {} });
    expect(c.stateDir).toBe('/var/lib/virtcbt');
    expect(c.reconcile.granularity).toBe(65536);
    expect(c.nbd.inflight).toBeGreaterThan(1);
  });

  it('gives the same defaults without convict (no file, no variable) as convict does', () => {
    expect(schemaDefaults()).toEqual(convict(schema, { env: {} }).getProperties());
    expect(loadConfig({ env: {} })).toEqual(convict(schema, { env: {} }).getProperties());
    expect(loadConfig({ env: { VIRTCBT_NBD_TIMEOUT_MS: '5' } }).nbd.timeoutMs).toBe(5);
  });

  it('reads a file and lets VIRTCBT_* override it', () => {
    const f = file('ok.json', JSON.stringify({ stateDir: '/srv/cbt', nbd: { inflight: 8 } }));
    const c = loadConfig({ file: f, env: { VIRTCBT_NBD_INFLIGHT: '4' } });
    expect(c.stateDir).toBe('/srv/cbt');
    expect(c.nbd.inflight).toBe(4);
  });

  it('rejects malformed JSON naming the file', () => {
    const f = file('bad.json', '{ "stateDir": ');
    expect(() => loadConfig({ file: f, env: {} })).toThrow(UsageError);
    expect(() => loadConfig({ file: f, env: {} })).toThrow(/bad\.json/);
  });

  it('rejects unknown keys and bad values', () => {
    expect(() => loadConfig({ file: file('unk.json', '{"stateDri": "/x"}'), env: {} })).toThrow(/stateDri/);
    expect(() => loadConfig({ file: file('gran.json', '{"reconcile": {"granularity": 1000}}'), env: {} })).toThrow(/power of two/);
  });

  it('rejects a missing --config file', () => {
    expect(() => loadConfig({ file: join(dir, 'nope.json'), env: {} })).toThrow(/does not exist/);
  });
});

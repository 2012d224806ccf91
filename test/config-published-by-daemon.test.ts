// The configuration virtcbtd validated, published beside its socket for the CLI: taken only for the
// very file it was validated from (same identity, changed long enough before), this schema, and no
// VIRTCBT_* variable; anything else is validated by convict as before. Against a real virtcbtd too.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { pollUntil } from '../src/util/abort.js';
import { UsageError } from '../src/util/errors.js';
import { effectiveConfigPath } from '../src/config/effective.js';
import { loadConfig, publishEffectiveConfig } from '../src/config/index.js';
import { tempDir } from './support/files.js';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon } from './support/daemon.js';

useCleanup();

/** A config file naming its own socket, written now. */
function configIn(dir: string, extra: Record<string, unknown> = {}, name = 'config.json') {
  const socket = join(dir, 'virtcbtd.sock');
  const file = join(dir, name);
  writeFileSync(file, JSON.stringify({ daemon: { socket }, log: { level: 'warn' }, ...extra }));
  return { file, socket };
}

const load = (file: string) => loadConfig({ file, env: {} });
const published = (file: string, env: NodeJS.ProcessEnv = {}) => loadConfig({ file, env, published: true });

/** Rewrites the record's config so that a test can tell it was the one taken. */
function markRecord(socket: string): void {
  const path = effectiveConfigPath(socket);
  const r = JSON.parse(readFileSync(path, 'utf8'));
  r.config.nbd.inflight = 777;
  writeFileSync(path, JSON.stringify(r));
}

describe('configuration published by virtcbtd', () => {
  it('is published once the file has not changed for a second, and taken by the CLI for that file', async () => {
    const { file, socket } = configIn(tempDir('cfg'));
    const t0 = Date.now();
    expect(await publishEffectiveConfig(file, socket, load)).toBe(true);
    // The file was written just now: publishing waited until a later write could not keep its timestamps.
    expect(Date.now() - t0).toBeGreaterThanOrEqual(900);
    expect(published(file)).toEqual(load(file));
    markRecord(socket);
    expect(published(file).nbd.inflight).toBe(777);
    // Without `published` (virtcbtd itself) the file is always validated.
    expect(load(file).nbd.inflight).not.toBe(777);
  });

  it('is not taken for a changed file, another path to it, a VIRTCBT_* variable, or another schema', async () => {
    const dir = tempDir('cfg');
    const { file, socket } = configIn(dir);
    expect(await publishEffectiveConfig(file, socket, load)).toBe(true);
    markRecord(socket);
    expect(published(file).nbd.inflight).toBe(777);
    expect(published(file, { VIRTCBT_LOG_LEVEL: 'debug' }).nbd.inflight).not.toBe(777);
    expect(published(join(dir, '.', 'sub', '..', 'config.json')).nbd.inflight).toBe(777); // same path, resolved
    const path = effectiveConfigPath(socket);
    const record = JSON.parse(readFileSync(path, 'utf8'));
    writeFileSync(path, JSON.stringify({ ...record, schema: 'another' }));
    expect(published(file).nbd.inflight).not.toBe(777);
    writeFileSync(path, JSON.stringify(record));
    expect(published(file).nbd.inflight).toBe(777);
    // Same size, other content: a bad value is reported by convict as before.
    writeFileSync(file, readFileSync(file, 'utf8').replace('"warn"', '"loud"'));
    expect(() => published(file)).toThrow(UsageError);
    expect(() => published(file)).toThrow(/log\.level/);
  });

  it('is not published for a file that fails validation or names another socket', async () => {
    const dir = tempDir('cfg');
    const bad = configIn(dir, { nbd: { inflight: -1 } });
    expect(await publishEffectiveConfig(bad.file, bad.socket, load)).toBe(false);
    expect(existsSync(effectiveConfigPath(bad.socket))).toBe(false);
    const other = configIn(dir, {}, 'other.json');
    expect(await publishEffectiveConfig(other.file, join(dir, 'elsewhere', 'virtcbtd.sock'), load)).toBe(false);
  });

  it('a file that changes while it is validated is validated again before anything is published', async () => {
    const { file, socket } = configIn(tempDir('cfg'));
    let calls = 0;
    const changing = (f: string) => {
      const c = load(f);
      if (++calls === 1) writeFileSync(file, JSON.stringify({ daemon: { socket }, log: { level: 'error' } }));
      return c;
    };
    expect(await publishEffectiveConfig(file, socket, changing)).toBe(true);
    expect(calls).toBe(2);
    expect(published(file).log.level).toBe('error');
  });

  it('a running virtcbtd publishes its configuration beside its socket, and the CLI works from it', async () => {
    const d = await startTestDaemon();
    const path = effectiveConfigPath(d.socket);
    await pollUntil(() => existsSync(path), 'virtcbtd to publish its configuration', { timeoutMs: 10_000, intervalMs: 50 });
    expect(published(d.configFile)).toEqual(load(d.configFile));
    // The CLI answers from the running daemon.
    const st = await d.cliJson(['status']);
    expect(st.daemon.pid).toEqual(expect.any(Number));
    expect(st.domains).toEqual(expect.any(Array));
    // A backup job that only the published record has: the CLI finds it there (validating the file
    // itself, it would find no such job: exit 2) and asks the daemon, which answers about the domain.
    const r = JSON.parse(readFileSync(path, 'utf8'));
    const domain = 'virtcbt-test-only-in-published-config';
    r.config.backup.jobs = [{ name: 'from-published', domains: [domain], consumer: 'c', repo: tempDir('repo'), keep: 0, calendar: 'daily', randomDelaySec: 0 }];
    writeFileSync(path, JSON.stringify(r));
    const job = await d.cli(['backup', '--job', 'from-published'], { reject: false });
    expect(job.stderr).not.toMatch(/no backup job/);
    expect(job.stderr).toMatch(new RegExp(`virtcbt backup: ${domain}: .*${domain}`));
    expect(job.stderr).not.toMatch(/not running/);
    expect(job.exitCode).toBe(1);
  });
});

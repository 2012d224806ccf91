#!/usr/bin/env node
// virtcbt-scanner: the scanner host's service. Takes scan jobs from named hypervisors over HTTPS with
// mutual TLS, reads their snapshot exports over NBD with TLS and has clamd scan the files. Mounts nothing.
import { parseArgs } from 'node:util';
import { errorMessage, exitCodeOf } from '../../util/errors.js';
import { createLogger } from '../../util/log.js';
import { loadScannerConfig } from './config.js';
import { OwnerIndexStore } from './owner-indexes.js';
import { openSavedState, type SavedState } from './saved-state.js';
import { startScannerServer } from './server.js';

const HELP = `usage: virtcbt-scanner [--config FILE]

Serves POST /v1/scans over HTTPS with mutual TLS (see the README, "Scanner host").
Configuration: --config FILE, else $VIRTCBT_SCANNER_CONFIG, else /etc/virtcbt-scanner/config.json.
Exit codes: 0 stopped by a signal, 1 failed, 2 bad configuration.`;

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { config: { type: 'string' }, help: { type: 'boolean', short: 'h' } } });
  if (values.help) {
    process.stdout.write(HELP + '\n');
    return;
  }
  const cfg = loadScannerConfig({ file: values.config });
  const log = createLogger(cfg.log.level);
  if (process.getuid?.() === 0) {
    log.warn('virtcbt-scanner runs as root: it needs no privilege; run it as its own user (systemd/virtcbt-scanner.service does)');
  }
  const ownerIndexBytes = cfg.ownerIndex.maxMiB * 1024 * 1024;
  // Owner indexes saved at the last stop are read back; a save directory that cannot be used costs
  // only that (each filesystem's next incremental scan reads its inode tables), so it is a warning.
  let saved: SavedState | undefined;
  let ownerIndexes: OwnerIndexStore | undefined;
  if (ownerIndexBytes > 0 && cfg.ownerIndex.saveDir) {
    try {
      saved = await openSavedState(cfg.ownerIndex.saveDir);
      ownerIndexes = new OwnerIndexStore(ownerIndexBytes, { digestKey: saved.digestKey });
      const back = await ownerIndexes.load(saved.file, saved.macKey);
      if (back.problem) log.warn('saved owner indexes not used', { problem: back.problem });
      else if (back.kept > 0) log.info('owner indexes read back', { kept: back.kept, file: saved.file });
    } catch (err) {
      log.warn('owner indexes are not saved across restarts (ownerIndex.saveDir)', { dir: cfg.ownerIndex.saveDir, error: errorMessage(err) });
      saved = undefined;
      ownerIndexes = undefined;
    }
  }
  const server = await startScannerServer({
    host: cfg.listen.host, port: cfg.listen.port, tlsDir: cfg.tlsDir, allowedClients: cfg.allowedClients,
    nbdTlsDir: cfg.nbdTlsDir, clamdSocket: cfg.clamd.socket, clamdTimeoutMs: cfg.clamd.timeoutSeconds * 1000,
    clamdSpoolDir: cfg.clamd.spoolDir, clamdSpoolMaxFileBytes: cfg.clamd.spoolMaxFileBytes,
    limits: cfg.limits, maxJobs: cfg.maxJobs, ownerIndexBytes, ownerIndexes, log,
  });
  // Tests and scripts read the port (listen.port 0) from this line.
  log.info('listening', { host: server.host, port: server.port, allowed: cfg.allowedClients.join(';') });
  // Saved while it runs too, when they changed: a crash loses at most saveEverySeconds of them.
  let savedVersion = ownerIndexes?.version ?? 0;
  let saving: Promise<unknown> | undefined;
  // `always`: also when nothing changed, which replaces a save file refused at start.
  const saveNow = async (always = false) => {
    if (!saved || !ownerIndexes || (!always && ownerIndexes.version === savedVersion)) return;
    const version = ownerIndexes.version;
    const n = await ownerIndexes.save(saved.file, saved.macKey);
    savedVersion = version;
    log.info('owner indexes saved', { kept: n, file: saved.file });
  };
  if (saved && cfg.ownerIndex.saveEverySeconds > 0) {
    setInterval(() => {
      saving ??= saveNow().catch((err: unknown) => log.warn('owner indexes could not be saved', { file: saved!.file, error: errorMessage(err) }))
        .finally(() => { saving = undefined; });
    }, cfg.ownerIndex.saveEverySeconds * 1000).unref();
  }
  const stop = () => {
    void (async () => {
      await server.close();
      await saving;
      await saveNow(true).catch((err: unknown) => log.warn('owner indexes could not be saved', { file: saved!.file, error: errorMessage(err) }));
      process.exit(0);
    })();
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

main().catch((err) => {
  // errorMessage ends with the error's hint (the next step).
  process.stderr.write(`virtcbt-scanner: ${errorMessage(err)}\n`);
  process.exit(exitCodeOf(err));
});

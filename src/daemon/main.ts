#!/usr/bin/env node
// virtcbtd: owns every QMP connection, folds dirty bitmaps on a schedule and on demand, replays
// the hook's spool, and serves the control API the CLI talks to.
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ChangeLog, explainChangeLogError } from '../changelog/index.js';
import { configFile, hasEnvOverrides, loadConfig, publishEffectiveConfig } from '../config/index.js';
import { allowedRepoRoots, groupSocketPath } from '../../config/schema.js';
import { Libvirt } from '../libvirt/index.js';
import { readDirtyExtents } from '../reconciler/index.js';
import { pollUntil } from '../util/abort.js';
import { errorMessage } from '../util/errors.js';
import { createLogger } from '../util/log.js';
import { BACKUP_STEPS, type BackupStep } from '../backup/index.js';
import { ControlServer } from './control-server.js';
import { hookFailureVerdict } from './hook-failure.js';
import { takeInstanceLock } from './instance-lock.js';
import { JobRunner } from './jobs.js';
import { registerRoutes } from './routes.js';
import { Spool } from './spool.js';
import { endStaleStorageDaemons, removeStaleStorageDaemonDirs } from '../qsd/index.js';
import { Tracker } from './tracker.js';
import { actionFor, depsFromConfig } from '../scan/quarantine.js';
import type { ReconcileStep } from '../reconciler/index.js';

const VERSION = '0.1.0';
/**
 * On SIGTERM, running jobs get this long to unwind after their cancel (guest thawed, snapshot
 * released, pass aborted, partial files removed): a backup that sees its signal between two
 * copy requests needs well under a second.
 */
const JOB_UNWIND_MS = 4_000;
/**
 * virtcbtd is gone this long after SIGTERM whatever still hangs (a QMP or NBD wait QEMU never
 * answers): systemd and an admin expect a stop to take seconds, not the length of a copy. What a
 * job then leaves behind, the next virtcbtd removes when it starts (see JobRunner.start).
 */
const EXIT_DEADLINE_MS = 4_500;

/** Test-only fault injection: VIRTCBT_FAULT_STEP=fold kills the daemon right before that fold step. */
function faultInjector(): ((step: ReconcileStep) => void) | undefined {
  const step = process.env.VIRTCBT_FAULT_STEP;
  if (!step) return undefined;
  return (s) => {
    if (s === step) process.kill(process.pid, 'SIGKILL');
  };
}

/**
 * Test-only fault injection: VIRTCBT_FAULT_BACKUP_STEP=copy kills the daemon at that backup step;
 * VIRTCBT_PAUSE_BACKUP=CONSUMER:STEP:FILE holds that consumer's backups at the step (writing
 * FILE.reached) until FILE exists, so a test can run other work beside a backup at a known point.
 */
function backupFault(): ((step: BackupStep, consumer: string) => void | Promise<void>) | undefined {
  const step = process.env.VIRTCBT_FAULT_BACKUP_STEP as BackupStep | undefined;
  const pause = /^([^:]+):([a-z]+):(\/.+)$/.exec(process.env.VIRTCBT_PAUSE_BACKUP ?? '');
  const kill = step && BACKUP_STEPS.includes(step) ? step : undefined;
  if (!kill && !pause) return undefined;
  return async (s, consumer) => {
    if (s === kill) process.kill(process.pid, 'SIGKILL');
    if (pause && s === pause[2] && consumer === pause[1]) {
      await writeFile(`${pause[3]}.reached`, '');
      await pollUntil(() => existsSync(pause[3]!), 'the test to release the paused backup', { timeoutMs: 600_000, intervalMs: 20 });
    }
  };
}

/**
 * Test-only: VIRTCBT_PAUSE_SYNC=STEP:FILE holds every sync at STEP (`copy`: before its copy;
 * `copying`: once its first write reached the target; `copying@BYTES`: once it has written that
 * many bytes) until FILE exists, writing FILE.reached.
 */
function syncFault(): ((step: 'copy' | 'copying', written?: number) => Promise<void>) | undefined {
  const pause = /^(copy|copying)(?:@(\d+))?:(\/.+)$/.exec(process.env.VIRTCBT_PAUSE_SYNC ?? '');
  if (!pause) return undefined;
  const [, at, bytes, file] = pause as unknown as [string, string, string | undefined, string];
  const threshold = Number(bytes ?? 1);
  let held = false;
  return async (step, written) => {
    if (step === 'copy') held = false; // a new sync's copy begins
    if (step !== at || (step === 'copying' && (held || (written ?? 0) < threshold))) return;
    held = true;
    await writeFile(`${file}.reached`, '');
    await pollUntil(() => existsSync(file), 'the test to release the paused sync', { timeoutMs: 600_000, intervalMs: 20 });
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { config: { type: 'string' } }, allowPositionals: false });
  const cfg = loadConfig({ file: values.config });
  const logger = createLogger(cfg.log.level);
  await mkdir(cfg.stateDir, { recursive: true, mode: 0o750 });
  await mkdir(cfg.runDir, { recursive: true, mode: 0o755 });
  // Before anything that a running virtcbtd owns (the change log, QMP sockets, the spool, the control socket).
  const lock = takeInstanceLock(cfg.stateDir, cfg.daemon.socket);
  const logPath = join(cfg.stateDir, 'changelog.db');
  const log = ChangeLog.open(logPath);
  let tracker: Tracker | undefined;
  const libvirt = new Libvirt(cfg.libvirt.uri, {
    unreachable: (reason) => logger.warn('libvirt is unreachable; virtcbtd keeps trying to reconnect', { uri: cfg.libvirt.uri, reason }),
    reconnected: () => {
      logger.info('libvirt reachable again', { uri: cfg.libvirt.uri });
      tracker?.onLibvirtReconnected();
    },
  });
  const fault = faultInjector();
  tracker = new Tracker(cfg, log, libvirt, logger, {
    readDirty: (uri, bitmap, size) => readDirtyExtents(uri, bitmap, size, { timeoutMs: cfg.nbd.timeoutMs }),
    beforeStep: fault ? (step) => fault(step) : undefined,
  });
  // SQLite says only "database or disk is full": name the file and the next step.
  const server = new ControlServer({ mapError: (err) => explainChangeLogError(err, logPath) });
  const jobs = new JobRunner(tracker, cfg, log, libvirt, logger, { backupFault: backupFault(), syncFault: syncFault() });
  registerRoutes(server, tracker, { pid: process.pid, startedAt: new Date().toISOString(), version: VERSION }, jobs, {
    groupRepoRoots: allowedRepoRoots(cfg),
    quarantine: { deps: depsFromConfig(cfg, libvirt, logger), actionFor: (d) => actionFor(cfg, d) },
  });
  const spool = new Spool(cfg.daemon.spoolDir, {
    handle: async (ev) => {
      await tracker.onHookEvent(ev);
      // The session ended and libvirt let go of the images: the domain's on-stop syncs run (in the background).
      if (ev.op === 'release') await jobs.syncOnStop(ev.domain);
    },
    classify: hookFailureVerdict,
    report: (level, msg, fields) => logger[level](msg, { ...fields, error: fields.error === undefined ? undefined : errorMessage(explainChangeLogError(fields.error, logPath)) }),
  });

  // Before any job on a stopped domain's images: what a killed virtcbtd left holding them.
  const ended = await endStaleStorageDaemons(join(cfg.daemon.enabledDir, '.holders'));
  if (ended.length > 0) logger.warn('ended storage daemons an earlier virtcbtd left on stopped domains\' images', { domains: ended });
  await removeStaleStorageDaemonDirs(cfg.runDir);
  await tracker.start();
  await jobs.start();
  // The spool's replay goes on while the daemon listens (recovery of running domains, likewise,
  // runs in their queues): a domain whose QEMU does not answer delays only its own events.
  const { replayed } = await spool.start();
  void replayed.then(() => {
    logger.debug('hook spool replayed');
    // After the replay: a replayed release runs its domain's on-stop syncs itself.
    return jobs.resumeOnStopSyncs();
  }).catch((err: unknown) => logger.warn('on-stop syncs owed by an earlier virtcbtd could not be resumed', { error: errorMessage(err) }));
  await server.listen(cfg.daemon.socket, { caller: 'root', mode: 0o600 });
  if (cfg.daemon.socketGroup) {
    await server.listen(groupSocketPath(cfg), { caller: 'group', mode: 0o660, group: cfg.daemon.socketGroup });
  }
  logger.info('virtcbtd ready', { socket: cfg.daemon.socket, groupSocket: cfg.daemon.socketGroup ? groupSocketPath(cfg) : undefined, version: VERSION });
  // The validated file, beside the socket, for the CLI (which then need not load convict).
  const file = configFile({ file: values.config });
  if (file && !hasEnvOverrides()) {
    publishEffectiveConfig(file, cfg.daemon.socket, (f) => loadConfig({ file: f })).then(
      (published) => logger.debug(published ? 'published the validated configuration for the CLI' : 'configuration not published for the CLI', { file }),
      (err: unknown) => logger.warn('could not publish the validated configuration for the CLI', { file, error: errorMessage(err) }),
    );
  }

  let stopping = false;
  const shutdown = async (sig: string) => {
    if (stopping) return;
    stopping = true;
    const t0 = Date.now();
    setTimeout(() => {
      logger.error('virtcbtd did not stop in time: exiting anyway; the next virtcbtd removes what its jobs left', {
        signal: sig, ms: EXIT_DEADLINE_MS, jobs: jobs.registry.list().filter((j) => j.endedAt === undefined).map((j) => j.id),
      });
      process.exit(1);
    }, EXIT_DEADLINE_MS).unref();
    logger.info('stopping', { signal: sig });
    spool.stop();
    // The jobs first, while their clients still listen: a backup's client is told it was cancelled.
    if (!(await jobs.registry.cancelAll(`virtcbtd is stopping (${sig})`, JOB_UNWIND_MS))) {
      logger.warn('jobs still unwinding after their cancel', { jobs: jobs.registry.list().filter((j) => j.endedAt === undefined).map((j) => j.id) });
    }
    await server.close({ graceMs: Math.max(0, Math.min(500, EXIT_DEADLINE_MS - 300 - (Date.now() - t0))) });
    await jobs.stop();
    await tracker.stop();
    log.close();
    await libvirt.close();
    lock.release();
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
}

main().catch((err) => {
  process.stderr.write(`virtcbtd: ${errorMessage(err)}\n`);
  process.exit(1);
});

// The convict schema of virtcbt's configuration: every setting, its default, and the
// VIRTCBT_* environment variable that overrides it. Loaded by src/config.
import type { Schema } from 'convict';
import { scanQuarantineSchema, type ScanQuarantineConfig } from './scan-quarantine.js';

export interface VirtcbtConfig {
  stateDir: string;
  runDir: string;
  qmpSocketDir: string;
  libvirt: { uri: string };
  daemon: { socket: string; socketGroup: string; groupSocket: string; spoolDir: string; enabledDir: string };
  reconcile: { intervalSeconds: number; granularity: number };
  nbd: { requestSize: number; inflight: number; connections: number; timeoutMs: number };
  qmp: { timeoutMs: number };
  agent: { timeoutMs: number; freezeTimeoutMs: number };
  fleece: { dir: string };
  snapshot: { remote: { bind: string; port: number; tlsDir: string; deadlineSeconds: number } };
  backup: { repo: string; allowedRepoRoots: string[]; jobs: BackupJobConfig[] };
  sync: { tlsCertificates: string; seedCheckpointMiB: number; onStop: SyncTargetConfig[]; jobs: SyncJobConfig[] };
  scan: ScanQuarantineConfig & { scanners: ScannerConfigEntry[]; timeoutSeconds: number; fullEveryHours: number; jobs: ScanJobConfig[] };
  log: { level: 'debug' | 'info' | 'warn' | 'error' };
}

/** A scheduled backup: `virtcbt install` writes virtcbt-backup@NAME.service and .timer for it. */
export interface BackupJobConfig {
  /** systemd instance name: letters, digits, '.', '_', '-'. */
  name: string;
  domains: string[];
  consumer: string;
  /** Repository directory; default backup.repo. */
  repo?: string;
  /** Restore points to keep per domain after each run (prune); 0 or absent: keep all. */
  keep?: number;
  /** systemd OnCalendar expression, e.g. "daily" or "Mon..Fri 02:00". */
  calendar: string;
  /** Seconds of random delay before a run (RandomizedDelaySec), so many jobs do not start at once. */
  randomDelaySec?: number;
}

/** A scheduled scan: `virtcbt install` writes virtcbt-scan@NAME.service and .timer for it. */
export interface ScanJobConfig {
  name: string;
  domains: string[];
  /** One of scan.scanners (default: the first that answers). */
  scanner?: string;
  calendar: string;
}

function checkScanJobs(v: unknown): void {
  if (!Array.isArray(v)) throw new Error('scan.jobs must be an array');
  const names = new Set<string>();
  v.forEach((x: unknown, i) => {
    const at = `scan.jobs[${i}]`;
    const o = x as Record<string, unknown>;
    if (!o || typeof o !== 'object') throw new Error(`${at} must be an object`);
    for (const k of Object.keys(o)) if (!['name', 'domains', 'scanner', 'calendar'].includes(k)) throw new Error(`${at}: unknown key '${k}'`);
    if (typeof o.name !== 'string' || !JOB_NAME.test(o.name)) throw new Error(`${at}.name must be letters, digits, '.', '_' or '-' (a systemd instance name)`);
    if (names.has(o.name)) throw new Error(`${at}.name '${o.name}' is used twice`);
    names.add(o.name);
    if (!Array.isArray(o.domains) || o.domains.length === 0 || !o.domains.every((d) => typeof d === 'string' && d !== '' && !d.includes('/'))) throw new Error(`${at}.domains must be a non-empty list of domain names`);
    if (o.scanner !== undefined && (typeof o.scanner !== 'string' || !JOB_NAME.test(o.scanner))) throw new Error(`${at}.scanner must be a scanner's name`);
    if (typeof o.calendar !== 'string' || o.calendar.trim() === '' || /[\n\r]/.test(o.calendar)) throw new Error(`${at}.calendar must be a systemd OnCalendar expression`);
  });
}

/** A scanner host (virtcbt-scanner) this hypervisor hands scans to. */
export interface ScannerConfigEntry {
  name: string;
  /** https://HOST:PORT of its API. */
  url: string;
  /** The scanner's client identity (subject DN): the only one a scan's exports let in. */
  identity: string;
  /** This host's credentials for the scanner's API: ca-cert.pem, client-cert.pem, client-key.pem. */
  tlsDir: string;
}

function checkScanners(v: unknown): void {
  if (!Array.isArray(v)) throw new Error('scan.scanners must be an array');
  const names = new Set<string>();
  v.forEach((x: unknown, i) => {
    const at = `scan.scanners[${i}]`;
    const o = x as Record<string, unknown>;
    if (!o || typeof o !== 'object') throw new Error(`${at} must be an object`);
    for (const k of Object.keys(o)) if (!['name', 'url', 'identity', 'tlsDir'].includes(k)) throw new Error(`${at}: unknown key '${k}'`);
    if (typeof o.name !== 'string' || !JOB_NAME.test(o.name)) throw new Error(`${at}.name must be letters, digits, '.', '_' or '-'`);
    if (names.has(o.name)) throw new Error(`${at}.name '${o.name}' is used twice`);
    names.add(o.name);
    if (typeof o.url !== 'string' || !/^https:\/\/[^/]+/.test(o.url)) throw new Error(`${at}.url must be https://HOST:PORT`);
    if (typeof o.identity !== 'string' || !/^[A-Za-z]+=/.test(o.identity)) throw new Error(`${at}.identity must be the scanner's certificate subject DN, e.g. CN=scanner`);
    if (typeof o.tlsDir !== 'string' || !o.tlsDir.startsWith('/')) throw new Error(`${at}.tlsDir must be an absolute directory`);
  });
}

/** A disk-copy sync target: one disk of one domain kept up to date at TARGET. */
export interface SyncTargetConfig {
  domain: string;
  disk: string;
  /** An image file (qcow2 or raw; made when missing) or an nbd:// / nbds:// URI. */
  to: string;
  format?: 'qcow2' | 'raw';
  /** Also free on the target what the guest freed (thin targets). */
  discard?: boolean;
}

/** A scheduled sync: `virtcbt install` writes virtcbt-sync@NAME.service and .timer for it. */
export interface SyncJobConfig extends SyncTargetConfig {
  name: string;
  /** systemd OnCalendar expression, down to a minute ("*:0/5" every five minutes). */
  calendar: string;
}

const JOB_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

function checkSyncTargets(what: string, withSchedule: boolean) {
  return (v: unknown): void => {
    if (!Array.isArray(v)) throw new Error(`${what} must be an array`);
    const names = new Set<string>();
    v.forEach((t: unknown, i) => {
      const at = `${what}[${i}]`;
      if (!t || typeof t !== 'object') throw new Error(`${at} must be an object`);
      const o = t as Record<string, unknown>;
      const keys = ['domain', 'disk', 'to', 'format', 'discard', ...(withSchedule ? ['name', 'calendar'] : [])];
      for (const k of Object.keys(o)) if (!keys.includes(k)) throw new Error(`${at}: unknown key '${k}'`);
      if (typeof o.domain !== 'string' || o.domain === '' || o.domain.includes('/')) throw new Error(`${at}.domain must be a domain name`);
      if (typeof o.disk !== 'string' || !/^[a-z][a-z0-9]{0,15}$/.test(o.disk)) throw new Error(`${at}.disk must be a disk target such as vda`);
      if (typeof o.to !== 'string' || !(o.to.startsWith('/') || /^nbds?:\/\//.test(o.to))) throw new Error(`${at}.to must be an absolute image path or an nbd:// / nbds:// URI`);
      if (o.format !== undefined && o.format !== 'qcow2' && o.format !== 'raw') throw new Error(`${at}.format must be qcow2 or raw`);
      if (o.discard !== undefined && typeof o.discard !== 'boolean') throw new Error(`${at}.discard must be true or false`);
      if (withSchedule) {
        if (typeof o.name !== 'string' || !JOB_NAME.test(o.name)) throw new Error(`${at}.name must be letters, digits, '.', '_' or '-' (a systemd instance name)`);
        if (names.has(o.name)) throw new Error(`${at}.name '${o.name}' is used twice`);
        names.add(o.name);
        if (typeof o.calendar !== 'string' || o.calendar.trim() === '' || /[\n\r]/.test(o.calendar)) throw new Error(`${at}.calendar must be a systemd OnCalendar expression`);
      }
    });
  };
}

function checkBackupJobs(v: unknown): void {
  if (!Array.isArray(v)) throw new Error('backup.jobs must be an array');
  const names = new Set<string>();
  v.forEach((j: unknown, i) => {
    const at = `backup.jobs[${i}]`;
    if (!j || typeof j !== 'object') throw new Error(`${at} must be an object`);
    const job = j as Record<string, unknown>;
    for (const k of Object.keys(job)) {
      if (!['name', 'domains', 'consumer', 'repo', 'keep', 'calendar', 'randomDelaySec'].includes(k)) throw new Error(`${at}: unknown key '${k}'`);
    }
    if (typeof job.name !== 'string' || !JOB_NAME.test(job.name)) throw new Error(`${at}.name must be letters, digits, '.', '_' or '-' (a systemd instance name)`);
    if (names.has(job.name)) throw new Error(`${at}.name '${job.name}' is used twice`);
    names.add(job.name);
    if (!Array.isArray(job.domains) || job.domains.length === 0 || !job.domains.every((d) => typeof d === 'string' && d !== '' && !d.includes('/'))) {
      throw new Error(`${at}.domains must be a non-empty list of domain names`);
    }
    if (typeof job.consumer !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(job.consumer)) throw new Error(`${at}.consumer must be a consumer name`);
    if (job.repo !== undefined && (typeof job.repo !== 'string' || !job.repo.startsWith('/'))) throw new Error(`${at}.repo must be an absolute path`);
    if (job.keep !== undefined && (!Number.isInteger(job.keep) || (job.keep as number) < 0)) throw new Error(`${at}.keep must be a whole number`);
    if (typeof job.calendar !== 'string' || job.calendar.trim() === '' || /[\n\r]/.test(job.calendar)) throw new Error(`${at}.calendar must be a systemd OnCalendar expression`);
    if (job.randomDelaySec !== undefined && (!Number.isInteger(job.randomDelaySec) || (job.randomDelaySec as number) < 0)) {
      throw new Error(`${at}.randomDelaySec must be a whole number of seconds`);
    }
  });
}

function checkRepoRoots(v: unknown): void {
  if (!Array.isArray(v) || !v.every((p) => typeof p === 'string' && p.startsWith('/') && !p.split('/').includes('..'))) {
    throw new Error('backup.allowedRepoRoots must be a list of absolute directory paths (no "..")');
  }
}

/**
 * The group socket's path: daemon.groupSocket, or beside daemon.socket with "-group" added
 * (virtcbtd.sock → virtcbtd-group.sock). Shared by virtcbtd and the CLI.
 */
export function groupSocketPath(cfg: Pick<VirtcbtConfig, 'daemon'>): string {
  if (cfg.daemon.groupSocket) return cfg.daemon.groupSocket;
  const s = cfg.daemon.socket;
  return s.endsWith('.sock') ? `${s.slice(0, -'.sock'.length)}-group.sock` : `${s}-group`;
}

/**
 * Repositories callers on the group socket may use: backup.allowedRepoRoots, or when that is
 * empty the repositories the configuration names (backup.repo and every job's repo).
 */
export function allowedRepoRoots(cfg: Pick<VirtcbtConfig, 'backup'>): string[] {
  if (cfg.backup.allowedRepoRoots.length > 0) return cfg.backup.allowedRepoRoots;
  return [...new Set([cfg.backup.repo, ...cfg.backup.jobs.map((j) => j.repo ?? '')].filter((r) => r !== ''))];
}

const isPositiveInt = (name: string) => (v: unknown) => {
  if (!Number.isInteger(v) || (v as number) <= 0) throw new Error(`${name} must be a positive integer`);
};

export const schema: Schema<VirtcbtConfig> = {
  stateDir: {
    doc: 'Where the change log database and per-domain state live.',
    format: String,
    default: '/var/lib/virtcbt',
    env: 'VIRTCBT_STATE_DIR',
  },
  runDir: {
    doc: 'Runtime directory: private NBD sockets, locks.',
    format: String,
    default: '/run/virtcbt',
    env: 'VIRTCBT_RUN_DIR',
  },
  qmpSocketDir: {
    doc: 'Directory for the dedicated per-domain QMP sockets. QEMU runs as libvirt-qemu and must be able to create sockets here (and AppArmor must allow it).',
    format: String,
    default: '/var/lib/libvirt/qemu/virtcbt',
    env: 'VIRTCBT_QMP_SOCKET_DIR',
  },
  libvirt: {
    uri: { doc: 'libvirt connection URI.', format: String, default: 'qemu:///system', env: 'VIRTCBT_LIBVIRT_URI' },
  },
  daemon: {
    socket: {
      doc: 'Control API socket of virtcbtd for root (HTTP + JSON, mode 0600).',
      format: String,
      default: '/run/virtcbt/virtcbtd.sock',
      env: 'VIRTCBT_DAEMON_SOCKET',
    },
    socketGroup: {
      doc: 'Group whose members may use virtcbtd through the group socket (empty: no group socket, root only). They may back up only into backup.allowedRepoRoots.',
      format: String,
      default: '',
      env: 'VIRTCBT_DAEMON_SOCKET_GROUP',
    },
    groupSocket: {
      doc: 'Control API socket for members of daemon.socketGroup (mode 0660), served only when socketGroup is set. Empty: beside daemon.socket, with "-group" added to its name.',
      format: String,
      default: '',
      env: 'VIRTCBT_DAEMON_GROUP_SOCKET',
    },
    enabledDir: {
      doc: 'One marker file per tracked domain, holding the spool directory its events go to: the libvirt hook reads it.',
      format: String,
      default: '/var/lib/virtcbt/enabled',
      env: 'VIRTCBT_ENABLED_DIR',
    },
    spoolDir: {
      doc: 'Where the libvirt hook spools events while the daemon is down; replayed on daemon start.',
      format: String,
      default: '/var/lib/virtcbt/spool',
      env: 'VIRTCBT_SPOOL_DIR',
    },
  },
  reconcile: {
    intervalSeconds: {
      doc: 'How often the daemon folds each running domain\'s dirty bitmap into the change log.',
      format: isPositiveInt('reconcile.intervalSeconds'),
      default: 900,
      env: 'VIRTCBT_RECONCILE_INTERVAL',
    },
    granularity: {
      doc: 'Dirty bitmap granularity in bytes (a power of two, 512 B to 64 MiB); also the change log block size.',
      format: (v: unknown) => {
        if (!Number.isInteger(v) || (v as number) < 512 || (v as number) > 64 << 20 || ((v as number) & ((v as number) - 1)) !== 0)
          throw new Error('reconcile.granularity must be a power of two between 512 and 67108864');
      },
      default: 65536,
      env: 'VIRTCBT_GRANULARITY',
    },
  },
  nbd: {
    requestSize: {
      doc: 'Bytes per NBD read/write request (clamped to the server\'s maximum block size).',
      format: isPositiveInt('nbd.requestSize'),
      // 64 × 256 KiB costs qemu-nbd about half the CPU of 16 × 2 MiB (see src/copy/copy-extents.ts).
      default: 256 * 1024,
      env: 'VIRTCBT_NBD_REQUEST_SIZE',
    },
    inflight: {
      doc: 'NBD requests in flight per connection.',
      format: isPositiveInt('nbd.inflight'),
      default: 64,
      env: 'VIRTCBT_NBD_INFLIGHT',
    },
    connections: {
      doc: 'NBD connections per export when the server allows multi-conn.',
      format: isPositiveInt('nbd.connections'),
      default: 1,
      env: 'VIRTCBT_NBD_CONNECTIONS',
    },
    timeoutMs: {
      doc: 'How long an NBD handshake or request may take before the connection is dropped.',
      format: isPositiveInt('nbd.timeoutMs'),
      default: 60_000,
      env: 'VIRTCBT_NBD_TIMEOUT_MS',
    },
  },
  qmp: {
    timeoutMs: {
      doc: 'How long a QMP greeting or command may take.',
      format: isPositiveInt('qmp.timeoutMs'),
      default: 30_000,
      env: 'VIRTCBT_QMP_TIMEOUT_MS',
    },
  },
  agent: {
    timeoutMs: {
      doc: 'How long a guest-agent command may take.',
      format: isPositiveInt('agent.timeoutMs'),
      default: 10_000,
      env: 'VIRTCBT_AGENT_TIMEOUT_MS',
    },
    freezeTimeoutMs: {
      doc: 'Longest a guest filesystem freeze may last before virtcbt thaws it regardless.',
      format: isPositiveInt('agent.freezeTimeoutMs'),
      default: 10_000,
      env: 'VIRTCBT_FREEZE_TIMEOUT_MS',
    },
  },
  fleece: {
    dir: {
      doc: 'Directory for the temporary fleecing overlays of running backups (they hold the old content of blocks the guest overwrites meanwhile). QEMU runs as libvirt-qemu and must be able to open files here (and AppArmor must allow it). Empty: a "fleece" directory under qmpSocketDir.',
      format: String,
      default: '',
      env: 'VIRTCBT_FLEECE_DIR',
    },
  },
  snapshot: {
    remote: {
      bind: {
        doc: 'Address of this host that exports for another host (NBD over TLS, e.g. to a scanner) listen on. Empty: no such exports (they are refused, naming this setting).',
        format: String,
        default: '',
        env: 'VIRTCBT_REMOTE_BIND',
      },
      port: {
        doc: 'TCP port of an export for another host; 0: any free port, named in the export\'s URI.',
        format: 'port',
        default: 0,
        env: 'VIRTCBT_REMOTE_PORT',
      },
      tlsDir: {
        doc: 'Server credentials of exports for another host: ca-cert.pem (the CA that signs the clients\' certificates), server-cert.pem (naming snapshot.remote.bind), server-key.pem.',
        format: String,
        default: '/etc/pki/virtcbt/server',
        env: 'VIRTCBT_REMOTE_TLS_DIR',
      },
      deadlineSeconds: {
        doc: 'An export for another host is torn down after this many seconds, read or not.',
        // At most 2^31-1 ms: Node fires a longer timer at once.
        format: (v: unknown) => {
          isPositiveInt('snapshot.remote.deadlineSeconds')(v);
          if ((v as number) > 2_147_483) throw new Error('snapshot.remote.deadlineSeconds must be at most 2147483 (24 days)');
        },
        default: 3600,
        env: 'VIRTCBT_REMOTE_DEADLINE',
      },
    },
  },
  backup: {
    repo: {
      doc: 'Default backup repository directory for `virtcbt backup`, list, verify, restore and prune (empty: --repo is required).',
      format: String,
      default: '',
      env: 'VIRTCBT_BACKUP_REPO',
    },
    allowedRepoRoots: {
      doc: 'Directories under which members of daemon.socketGroup may have virtcbtd write backups (resolved, symlinks included; root is not limited). Empty: only backup.repo and the repositories of backup.jobs.',
      format: checkRepoRoots,
      default: [] as string[],
    },
    jobs: {
      doc: 'Scheduled backups: [{name, domains, consumer, repo?, keep?, calendar, randomDelaySec?}]; `virtcbt install` writes a systemd timer for each.',
      format: checkBackupJobs,
      default: [] as BackupJobConfig[],
    },
  },
  scan: {
    ...scanQuarantineSchema,
    scanners: {
      doc: 'Scanner hosts scans are handed to, tried in this order: [{name, url (https://HOST:PORT), identity (its client certificate DN), tlsDir (ca-cert.pem, client-cert.pem, client-key.pem of this host)}].',
      format: checkScanners,
      default: [] as ScannerConfigEntry[],
    },
    timeoutSeconds: {
      doc: 'A scan (snapshot, scanner\'s work, verdict) fails after this long; its snapshot is torn down and its consumer does not move.',
      format: isPositiveInt('scan.timeoutSeconds'),
      default: 3600,
    },
    jobs: {
      doc: 'Scheduled scans: [{name, domains, scanner?, calendar}]; `virtcbt install` writes a systemd timer for each.',
      format: checkScanJobs,
      default: [] as ScanJobConfig[],
    },
    fullEveryHours: {
      doc: 'A full scan (every file) at least this often; between them scans read only the files whose blocks changed. 0: only with --full.',
      format: (v: unknown) => { if (!Number.isInteger(v) || (v as number) < 0) throw new Error('scan.fullEveryHours must be a whole number of hours'); },
      default: 168,
    },
  },
  sync: {
    tlsCertificates: {
      doc: 'Client credentials for nbds:// sync targets: ca-cert.pem (the CA of the target\'s server certificate), client-cert.pem, client-key.pem.',
      format: String,
      default: '/etc/pki/virtcbt/client',
    },
    seedCheckpointMiB: {
      doc: 'A seed (the first sync to a target) flushes the target and records how far it got after every this many MiB: a seed whose virtcbtd is killed resumes from there. 0: only a seed that fails cleanly resumes.',
      format: (v: unknown) => { if (!Number.isInteger(v) || (v as number) < 0) throw new Error('sync.seedCheckpointMiB must be a whole number of MiB (0: none)'); },
      default: 1024,
    },
    onStop: {
      doc: 'Disks synced when their domain stops (from its images, by virtcbtd): [{domain, disk, to, format?, discard?}]. A domain start never waits for such a sync: it is cancelled and the next sync covers it.',
      format: checkSyncTargets('sync.onStop', false),
      default: [] as SyncTargetConfig[],
    },
    jobs: {
      doc: 'Scheduled syncs: [{name, domain, disk, to, format?, discard?, calendar}]; `virtcbt install` writes a systemd timer for each.',
      format: checkSyncTargets('sync.jobs', true),
      default: [] as SyncJobConfig[],
    },
  },
  log: {
    level: { doc: 'Log level.', format: ['debug', 'info', 'warn', 'error'], default: 'info', env: 'VIRTCBT_LOG_LEVEL' },
  },
};

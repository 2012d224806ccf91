// The convict schema of virtcbt-scanner's configuration (/etc/virtcbt-scanner/config.json, VIRTCBT_SCANNER_* variables).
import type { Schema } from 'convict';

export interface ScannerConfig {
  listen: { host: string; port: number };
  /** server-cert.pem, server-key.pem, and ca-cert.pem: the CA hypervisor clients' certificates come from. */
  tlsDir: string;
  /** Hypervisor identities allowed to post jobs: subject DNs as certificateSubject gives them ("CN=hv1", "O=Example,CN=hv1"). */
  allowedClients: string[];
  /** ca-cert.pem, client-cert.pem, client-key.pem presented to the hypervisors' NBD exports. */
  nbdTlsDir: string;
  /** spoolDir: files handed to clamd by path from here (clamd-spool.ts); empty: INSTREAM only. */
  clamd: { socket: string; timeoutSeconds: number; spoolDir: string; spoolMaxFileBytes: number };
  limits: { maxFileBytes: number; maxFiles: number; maxSeconds: number; streamMaxLength: number; concurrency: number };
  /** Jobs run at once; more are answered 503. */
  maxJobs: number;
  /** Memory for owner indexes kept between scans (src/fs/ext/owner-index.ts); 0: none, every incremental scan reads the inode tables. */
  ownerIndex: { maxMiB: number; saveDir: string; saveEverySeconds: number };
  log: { level: 'debug' | 'info' | 'warn' | 'error' };
}

const positive = (name: string) => (v: unknown) => {
  if (!Number.isSafeInteger(v) || (v as number) <= 0) throw new Error(`${name} must be a positive whole number`);
};

const positiveNumber = (name: string) => (v: unknown) => {
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw new Error(`${name} must be a positive number`);
};

const absolute = (name: string) => (v: unknown) => {
  if (typeof v !== 'string' || !v.startsWith('/')) throw new Error(`${name} must be an absolute path`);
};

function checkClients(v: unknown): void {
  if (!Array.isArray(v)) throw new Error('allowedClients must be a list of subject DNs');
  for (const id of v) {
    if (typeof id !== 'string' || !/^[A-Za-z0-9.]+=/.test(id) || /[\0-\x1f]/.test(id)) {
      throw new Error(`allowedClients: ${JSON.stringify(id)} is not a subject DN such as "CN=hv1" or "O=Example,CN=hv1"`);
    }
  }
}

const MiB = 1024 * 1024;

export const scannerSchema: Schema<ScannerConfig> = {
  listen: {
    host: { doc: 'Address the HTTPS API listens on (the hypervisors\' network).', format: String, default: '127.0.0.1', env: 'VIRTCBT_SCANNER_HOST' },
    port: { doc: 'TCP port of the HTTPS API (0: any free port, printed at start).', format: 'port', default: 8443, env: 'VIRTCBT_SCANNER_PORT' },
  },
  tlsDir: { doc: 'Server credentials: server-cert.pem, server-key.pem, ca-cert.pem (CA of the hypervisors\' client certificates).', format: absolute('tlsDir'), default: '/etc/virtcbt-scanner/tls', env: 'VIRTCBT_SCANNER_TLS_DIR' },
  allowedClients: { doc: 'Subject DNs of the hypervisors allowed to post scan jobs (exact match, certificate order: "O=Example,CN=hv1").', format: checkClients, default: [] as string[] },
  nbdTlsDir: { doc: 'Client credentials for the hypervisors\' NBD exports: ca-cert.pem, client-cert.pem, client-key.pem.', format: absolute('nbdTlsDir'), default: '/etc/virtcbt-scanner/nbd-client', env: 'VIRTCBT_SCANNER_NBD_TLS_DIR' },
  clamd: {
    socket: { doc: 'clamd\'s unix socket (clamd.conf LocalSocket).', format: absolute('clamd.socket'), default: '/run/clamav/clamd.ctl', env: 'VIRTCBT_SCANNER_CLAMD_SOCKET' },
    timeoutSeconds: { doc: 'One file\'s scan may take this long before clamd counts as hung.', format: positive('clamd.timeoutSeconds'), default: 300 },
    spoolDir: {
      doc: 'A directory clamd can read (a tmpfs: the unit\'s RuntimeDirectory) where each file is written for clamd to scan by path, which costs clamd less CPU than INSTREAM. Until clamd reads it (its user in the directory\'s group, its AppArmor profile), files go by INSTREAM and the log says why. Empty: INSTREAM only.',
      format: (v: unknown) => {
        if (typeof v !== 'string' || (v !== '' && !v.startsWith('/')) || /[\0-\x1f]/.test(v)) throw new Error('clamd.spoolDir must be an absolute path without control characters, or empty for none');
      },
      default: '/run/virtcbt-scanner', env: 'VIRTCBT_SCANNER_CLAMD_SPOOL_DIR',
    },
    spoolMaxFileBytes: { doc: 'Larger files go to clamd by INSTREAM: the spool holds at most limits.concurrency files of this size.', format: positive('clamd.spoolMaxFileBytes'), default: 32 * MiB },
  },
  limits: {
    maxFileBytes: { doc: 'Files larger than this are skipped and reported.', format: positive('limits.maxFileBytes'), default: 100 * MiB },
    maxFiles: { doc: 'At most this many files are scanned per job; the rest are reported as skipped.', format: positive('limits.maxFiles'), default: 1_000_000 },
    maxSeconds: { doc: 'A job stops starting files after this many seconds (fractions allowed); what is left is reported as skipped.', format: positiveNumber('limits.maxSeconds'), default: 3600 },
    streamMaxLength: { doc: 'clamd\'s StreamMaxLength (keep equal): larger files are skipped and reported rather than cut off by clamd.', format: positive('limits.streamMaxLength'), default: 100 * MiB },
    concurrency: { doc: 'Files streamed to clamd at once (set to clamd\'s MaxThreads).', format: positive('limits.concurrency'), default: 4 },
  },
  maxJobs: { doc: 'Scan jobs run at once; more are refused with 503.', format: positive('maxJobs'), default: 2 },
  ownerIndex: {
    maxMiB: {
      doc: 'Memory for the owner indexes kept between scans (which inode owns which block, per filesystem scanned): an incremental scan then reads the changed metadata instead of every inode table. About 250 bytes per file; the least recently used are dropped beyond this. 0: none.',
      format: (v: unknown) => { if (!Number.isSafeInteger(v) || (v as number) < 0) throw new Error('ownerIndex.maxMiB must be a whole number of MiB, 0 or more'); },
      default: 512,
    },
    saveDir: {
      doc: 'Where the owner indexes (and the secret that authenticates them) are saved when the scanner stops and read back when it starts, so that a restart does not cost each filesystem a read of its inode tables: its own directory, mode 0700 (the unit\'s StateDirectory). Empty: not saved.',
      format: (v: unknown) => { if (typeof v !== 'string' || (v !== '' && !v.startsWith('/'))) throw new Error('ownerIndex.saveDir must be an absolute path, or empty for none'); },
      default: '/var/lib/virtcbt-scanner',
      env: 'VIRTCBT_SCANNER_SAVE_DIR',
    },
    saveEverySeconds: {
      doc: 'While it runs, the scanner also saves its owner indexes this often when they changed, so that a crash (or a kill) loses at most that much. 0: only when it stops.',
      format: (v: unknown) => { if (!Number.isSafeInteger(v) || (v as number) < 0) throw new Error('ownerIndex.saveEverySeconds must be a whole number of seconds, 0 or more'); },
      default: 1800,
    },
  },
  log: { level: { doc: 'Log level.', format: ['debug', 'info', 'warn', 'error'], default: 'info', env: 'VIRTCBT_SCANNER_LOG_LEVEL' } },
};

// The convict schema of virtcbt's configuration: every setting, its default, and the
// VIRTCBT_* environment variable that overrides it. Loaded by src/config.
import type { Schema } from 'convict';

export interface VirtcbtConfig {
  stateDir: string;
  runDir: string;
  qmpSocketDir: string;
  libvirt: { uri: string };
  daemon: { socket: string; socketGroup: string; spoolDir: string };
  reconcile: { intervalSeconds: number; granularity: number };
  nbd: { requestSize: number; inflight: number; connections: number; timeoutMs: number };
  qmp: { timeoutMs: number };
  agent: { timeoutMs: number; freezeTimeoutMs: number };
  log: { level: 'debug' | 'info' | 'warn' | 'error' };
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
      doc: 'Control API socket of virtcbtd (HTTP + JSON, mode 0660).',
      format: String,
      default: '/run/virtcbt/virtcbtd.sock',
      env: 'VIRTCBT_DAEMON_SOCKET',
    },
    socketGroup: {
      doc: 'Group that may use the control socket (empty: root only).',
      format: String,
      default: '',
      env: 'VIRTCBT_DAEMON_SOCKET_GROUP',
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
      default: 2 * 1024 * 1024,
      env: 'VIRTCBT_NBD_REQUEST_SIZE',
    },
    inflight: {
      doc: 'NBD requests in flight per connection.',
      format: isPositiveInt('nbd.inflight'),
      default: 16,
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
  log: {
    level: { doc: 'Log level.', format: ['debug', 'info', 'warn', 'error'], default: 'info', env: 'VIRTCBT_LOG_LEVEL' },
  },
};

// The registry of CLI subcommands, in the order `virtcbt --help` lists them. A command's module
// loads only when it runs: `virtcbt nbd map` must not pay for the daemon client or the backup code.
import type { Command } from '../command.js';

export interface CommandEntry {
  name: string;
  summary: string;
  load(): Promise<Command>;
}

export const commands: CommandEntry[] = [
  { name: 'enable', summary: 'start tracking a domain\'s disks (adds virtcbt\'s QMP socket and dirty bitmaps)', load: async () => (await import('./tracking.js')).enableCommand },
  { name: 'disable', summary: 'stop tracking a domain (removes virtcbt\'s bitmaps, QMP socket and change log)', load: async () => (await import('./tracking.js')).disableCommand },
  { name: 'status', summary: 'show tracked domains, disks, consumers and open passes', load: async () => (await import('./tracking.js')).statusCommand },
  { name: 'consumer', summary: 'add, remove or list the consumers of a domain\'s change log', load: async () => (await import('./consumer.js')).consumerCommand },
  { name: 'changes', summary: 'what changed for a consumer since its last completed pass', load: async () => (await import('./tracking.js')).changesCommand },
  { name: 'pass', summary: 'begin, commit or abort a consumer\'s pass (for third-party backup tools)', load: async () => (await import('./consumer.js')).passCommand },
  { name: 'reconcile', summary: 'fold the domain\'s dirty bitmaps into the change log now', load: async () => (await import('./tracking.js')).reconcileCommand },
  { name: 'backup', summary: 'back up a domain for a consumer (full or incremental) into a repository', load: async () => (await import('./backup.js')).backupCommand },
  { name: 'jobs', summary: 'list virtcbtd\'s running and recent jobs (backups, syncs, scans, pass exports); cancel one', load: async () => (await import('./jobs.js')).jobsCommand },
  { name: 'quarantine', summary: 'domains a scan found infected: status, and release (links restored as they were)', load: async () => (await import('./quarantine.js')).quarantineCommand },
  { name: 'sync', summary: 'bring a second copy of a disk up to date: only blocks modified since its last sync and in use now', load: async () => (await import('./sync.js')).syncCommand },
  { name: 'usedmap', summary: 'which byte ranges of a disk the guest\'s filesystems use now (what a sync copies)', load: async () => (await import('./sync.js')).usedmapCommand },
  { name: 'scan', summary: 'hand a snapshot of a running domain to a scanner host and act on its verdict', load: async () => (await import('./scan.js')).scanCommand },
  { name: 'list', summary: 'list the restore points in a backup repository', load: async () => (await import('./repo.js')).listCommand },
  { name: 'verify', summary: 'check every backup: qemu-img check, chain links, and the checksum of the data', load: async () => (await import('./repo.js')).verifyCommand },
  { name: 'restore', summary: 'restore one disk of a backup into a qcow2 or raw file', load: async () => (await import('./repo.js')).restoreCommand },
  { name: 'prune', summary: 'keep only the newest N restore points of a consumer, merging older increments', load: async () => (await import('./repo.js')).pruneCommand },
  { name: 'sync-target', summary: 'serve an image on this host as a writable TLS NBD target of a sync (runs in the foreground, no virtcbtd)', load: async () => (await import('./sync-target.js')).syncTargetCommand },
  { name: 'certs', summary: 'make a CA and the TLS credentials of a hypervisor, a sync target or a scanner (QEMU\'s layout)', load: async () => (await import('./certs.js')).certsCommand },
  { name: 'install', summary: 'install the libvirt hook, the systemd units and the virtcbt/virtcbtd commands', load: async () => (await import('./install.js')).installCommand },
  { name: 'nbd', summary: 'Talk to an NBD export directly: info, list, map (like nbdinfo --map), copy', load: async () => (await import('./nbd.js')).nbdCommand },
];

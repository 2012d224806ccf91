// `virtcbt install`: puts the libvirt hook, the systemd units and the command wrappers in place,
// with this installation's paths filled in. Idempotent; never overwrites an existing config.
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, readFile, writeFile, access } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEFAULT_SCANNER_CONFIG } from '../../scan/scanner/config.js';
import { SCANNER_NODE_FLAGS } from '../../scan/scanner/node-flags.js';
import { DEFAULT_CONFIG_FILE, type BackupJobConfig, type ScanJobConfig, type SyncJobConfig } from '../../config/index.js';
import { backupJobUnits, jobUnitName, scanJobUnits, syncJobUnits } from './job-units.js';
import { parse } from '../args.js';
import { EXIT, type Command } from '../command.js';
import { emit } from '../output.js';

/**
 * The repository (or installed package) root: the nearest directory above this module with
 * package.json and hooks/ (the module is dist/src/cli/commands/install.js, or a chunk of the
 * bundled CLI elsewhere under dist/src/cli).
 */
export const PACKAGE_ROOT = packageRoot(dirname(fileURLToPath(import.meta.url)));

function packageRoot(from: string): string {
  for (let d = from; ; d = dirname(d)) {
    if (existsSync(join(d, 'package.json')) && existsSync(join(d, 'hooks'))) return d;
    if (dirname(d) === d) return resolve(from, '../../../..');
  }
}

export interface InstallPlan {
  root: string;
  files: { path: string; mode: number; content: string }[];
}

export async function installPlan(opts: { root: string; enabledDir: string; configFile: string; backupJobs?: readonly BackupJobConfig[]; syncJobs?: readonly SyncJobConfig[]; scanJobs?: readonly ScanJobConfig[] }): Promise<InstallPlan> {
  const node = process.execPath;
  const fill = (s: string) => s
    .replaceAll('@ENABLED_DIR@', opts.enabledDir)
    .replaceAll('@NODE@', node)
    .replaceAll('@PREFIX@', PACKAGE_ROOT)
    .replaceAll('@CONFIG@', opts.configFile);
  const hook = fill(await readFile(join(PACKAGE_ROOT, 'hooks/qemu.d/virtcbt'), 'utf8'));
  const unit = fill(await readFile(join(PACKAGE_ROOT, 'systemd/virtcbtd.service'), 'utf8'));
  const wrapper = (entry: string) => `#!/bin/sh\n# Installed by virtcbt install.\nexec ${node} ${join(PACKAGE_ROOT, entry)} "$@"\n`;
  return {
    root: opts.root,
    files: [
      { path: '/etc/libvirt/hooks/qemu.d/virtcbt', mode: 0o755, content: hook },
      { path: '/etc/systemd/system/virtcbtd.service', mode: 0o644, content: unit },
      { path: '/usr/local/sbin/virtcbt', mode: 0o755, content: wrapper('dist/src/cli/main.js') },
      { path: '/usr/local/sbin/virtcbtd', mode: 0o755, content: wrapper('dist/src/daemon/main.js') },
      ...(await backupJobUnits(PACKAGE_ROOT, opts.backupJobs ?? [], fill)),
      ...(await syncJobUnits(PACKAGE_ROOT, opts.syncJobs ?? [], fill)),
      ...(await scanJobUnits(PACKAGE_ROOT, opts.scanJobs ?? [], fill)),
    ],
  };
}

const exists = (p: string) => access(p).then(() => true, () => false);

/** A scanner host's files: virtcbt-scanner's unit and wrapper (it has no hook, no virtcbtd). */
export async function scannerInstallPlan(root: string): Promise<InstallPlan> {
  const flags = SCANNER_NODE_FLAGS.join(' ');
  const fill = (s: string) => s.replaceAll('@NODE@', process.execPath).replaceAll('@SCANNER_NODE_FLAGS@', flags).replaceAll('@PREFIX@', PACKAGE_ROOT);
  return {
    root,
    files: [
      { path: '/etc/systemd/system/virtcbt-scanner.service', mode: 0o644, content: fill(await readFile(join(PACKAGE_ROOT, 'systemd/virtcbt-scanner.service'), 'utf8')) },
      { path: '/usr/local/sbin/virtcbt-scanner', mode: 0o755, content: `#!/bin/sh\n# Installed by virtcbt install --scanner.\nexec ${process.execPath} ${flags} ${join(PACKAGE_ROOT, 'dist/src/scan/scanner/main.js')} "$@"\n` },
    ],
  };
}

async function writePlan(plan: InstallPlan): Promise<string[]> {
  const written: string[] = [];
  for (const f of plan.files) {
    const p = join(plan.root, f.path);
    await mkdir(dirname(p), { recursive: true });
    await writeFile(p, f.content);
    await chmod(p, f.mode);
    written.push(p);
  }
  return written;
}

/** Copies `example` (in this package's config/) to `conf` under `root` unless a file is there. */
async function starterConfig(root: string, conf: string, example: string): Promise<string | undefined> {
  const to = join(root, conf);
  if (await exists(to)) return undefined;
  await mkdir(dirname(to), { recursive: true });
  await copyFile(join(PACKAGE_ROOT, 'config', example), to);
  return to;
}

export const installCommand: Command = {
  usage: `usage: virtcbt install [--root DIR] [--dry-run] [--json]

Writes /etc/libvirt/hooks/qemu.d/virtcbt, /etc/systemd/system/virtcbtd.service and wrappers in
/usr/local/sbin, and a starting /etc/virtcbt/config.json if there is none. For every backup job
in the config (backup.jobs) it writes virtcbt-backup@JOB.service and virtcbt-backup@JOB.timer, for
every sync job (sync.jobs) virtcbt-sync@JOB.service and virtcbt-sync@JOB.timer, and for every scan
job (scan.jobs) virtcbt-scan@JOB.service and virtcbt-scan@JOB.timer. libvirtd reads hooks when it
starts: restart it afterwards (systemctl restart libvirtd).
With --scanner (on a scanner host): virtcbt-scanner.service, a virtcbt-scanner wrapper and a starting
/etc/virtcbt-scanner/config.json if there is none; no hypervisor configuration is read.
  --scanner    install the scanner host's service instead
  --root DIR   install under DIR instead of / (for packaging and tests)
  --dry-run    print what would be written`,
  async run(ctx) {
    const { values } = parse(ctx.argv, { root: { type: 'string' }, 'dry-run': { type: 'boolean' }, json: { type: 'boolean' }, scanner: { type: 'boolean' } }, this.usage);
    const root = values.root ?? '/';
    const verb = values['dry-run'] ? 'would write' : 'wrote';
    if (values.scanner) {
      // A scanner host: no hypervisor configuration is read (there is none there).
      const plan = await scannerInstallPlan(root);
      const written = values['dry-run'] ? [] : await writePlan(plan);
      const conf = values['dry-run'] ? undefined : await starterConfig(root, DEFAULT_SCANNER_CONFIG, 'scanner-example.json');
      if (conf) written.push(conf);
      emit(ctx.io, Boolean(values.json), { root, files: plan.files.map((f) => f.path), written }, () => [
        ...plan.files.map((f) => `${verb} ${join(root, f.path)}`),
        ...(conf ? [`wrote ${conf} (an example: edit listen, allowedClients and the credential directories)`] : []),
        'next: `useradd --system --no-create-home --shell /usr/sbin/nologin virtcbt-scanner`; the credentials in',
        `      tlsDir and nbdTlsDir (\`virtcbt certs\`, keys readable by that user); clamd running and reading`,
        `      the spool (clamd.spoolDir): \`usermod -aG virtcbt-scanner clamav\`, "/run/virtcbt-scanner/** r," in`,
        '      /etc/apparmor.d/local/usr.sbin.clamd, `apparmor_parser -r /etc/apparmor.d/usr.sbin.clamd`,',
        '      `AlertExceedsMax true` in /etc/clamav/clamd.conf (a file clamd stops short of at its own limits',
        '      is then reported skipped, not OK), `systemctl restart clamav-daemon`; then',
        '      `systemctl daemon-reload && systemctl enable --now virtcbt-scanner`',
      ]);
      return EXIT.OK;
    }
    const cfg = ctx.config();
    const plan = await installPlan({ root, enabledDir: cfg.daemon.enabledDir, configFile: DEFAULT_CONFIG_FILE, backupJobs: cfg.backup.jobs, syncJobs: cfg.sync.jobs, scanJobs: cfg.scan.jobs });
    const written: string[] = [];
    if (!values['dry-run']) {
      written.push(...await writePlan(plan));
      const conf = await starterConfig(root, DEFAULT_CONFIG_FILE, 'example.json');
      if (conf) written.push(conf);
      await mkdir(join(root, cfg.daemon.spoolDir), { recursive: true, mode: 0o750 });
      await mkdir(join(root, cfg.daemon.enabledDir), { recursive: true, mode: 0o750 });
    }
    emit(ctx.io, Boolean(values.json), { root, files: plan.files.map((f) => f.path), written }, () => [
      ...plan.files.map((f) => `${verb} ${join(root, f.path)}`),
      'next: restart libvirtd so that it reads the hook, then `systemctl enable --now virtcbtd`',
      ...cfg.backup.jobs.map((j) => `      and \`systemctl enable --now ${jobUnitName('backup', j.name, 'timer')}\` for backup job ${j.name}`),
      ...cfg.sync.jobs.map((j) => `      and \`systemctl enable --now ${jobUnitName('sync', j.name, 'timer')}\` for sync job ${j.name}`),
      ...cfg.scan.jobs.map((j) => `      and \`systemctl enable --now ${jobUnitName('scan', j.name, 'timer')}\` for scan job ${j.name}`),
    ]);
    return EXIT.OK;
  },
};

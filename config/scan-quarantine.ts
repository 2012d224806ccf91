// The quarantine part of the `scan` settings: what virtcbt does to a domain a scan finds infected
// (default and per domain), the webhook told of each verdict, and the command action's timeout.
import type { Schema } from 'convict';

/** What happens to a domain on detection (see src/scan/quarantine.ts). */
export type QuarantineAction = 'link-down' | 'suspend' | 'shutdown' | 'none' | 'command';
export const QUARANTINE_ACTIONS: readonly QuarantineAction[] = ['link-down', 'suspend', 'shutdown', 'none', 'command'];

/** A per-domain override of scan.quarantine. */
export interface ScanDomainConfig {
  domain: string;
  action: QuarantineAction;
  /** For action "command": the program and its first arguments (argv, never a shell line). */
  command?: string[];
}

export interface ScanQuarantineConfig {
  /** Action for domains scan.domains does not name. */
  quarantine: Exclude<QuarantineAction, 'command'>;
  domains: ScanDomainConfig[];
  /** http:// or https:// URL that gets each verdict as a JSON POST; empty: none. */
  webhook: string;
  commandTimeoutSeconds: number;
  shutdownTimeoutSeconds: number;
}

function checkDomains(v: unknown): void {
  if (!Array.isArray(v)) throw new Error('scan.domains must be an array');
  const seen = new Set<string>();
  v.forEach((d: unknown, i) => {
    const at = `scan.domains[${i}]`;
    if (!d || typeof d !== 'object' || Array.isArray(d)) throw new Error(`${at} must be an object {domain, action, command?}`);
    const o = d as Record<string, unknown>;
    for (const k of Object.keys(o)) if (!['domain', 'action', 'command'].includes(k)) throw new Error(`${at}: unknown key '${k}'`);
    if (typeof o.domain !== 'string' || o.domain === '' || o.domain.includes('/') || o.domain.length > 255) throw new Error(`${at}.domain must be a domain name`);
    if (seen.has(o.domain)) throw new Error(`${at}.domain '${o.domain}' is listed twice`);
    seen.add(o.domain);
    if (typeof o.action !== 'string' || !(QUARANTINE_ACTIONS as readonly string[]).includes(o.action)) {
      throw new Error(`${at}.action must be one of ${QUARANTINE_ACTIONS.join(', ')}`);
    }
    if (o.action === 'command') {
      if (!Array.isArray(o.command) || o.command.length === 0 || !o.command.every((a) => typeof a === 'string' && !a.includes('\0'))) {
        throw new Error(`${at}.command must be a list: the program (an absolute path) and its arguments, e.g. ["/usr/local/bin/isolate", "--now"]`);
      }
      if (!(o.command[0] as string).startsWith('/')) throw new Error(`${at}.command[0] must be an absolute path (no shell, no PATH search)`);
    } else if (o.command !== undefined) {
      throw new Error(`${at}.command is only for action "command"`);
    }
  });
}

function checkWebhook(v: unknown): void {
  if (typeof v !== 'string') throw new Error('scan.webhook must be a URL string');
  if (v === '') return;
  let u: URL;
  try {
    u = new URL(v);
  } catch {
    throw new Error(`scan.webhook '${v}' is not a URL`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error('scan.webhook must be an http:// or https:// URL');
}

const seconds = (name: string, max: number) => (v: unknown) => {
  if (!Number.isInteger(v) || (v as number) <= 0 || (v as number) > max) throw new Error(`${name} must be a whole number of seconds between 1 and ${max}`);
};

export const scanQuarantineSchema: Schema<ScanQuarantineConfig> = {
  quarantine: {
    doc: 'What virtcbt does to an infected domain that scan.domains does not name: link-down (every interface down, live and in the persistent definition), suspend, shutdown (graceful, then forced after scan.shutdownTimeoutSeconds) or none (recorded and reported only).',
    format: ['link-down', 'suspend', 'shutdown', 'none'],
    default: 'link-down',
    env: 'VIRTCBT_SCAN_QUARANTINE',
  },
  domains: {
    doc: 'Per-domain actions on detection: [{domain, action, command?}]; action "command" runs command (argv: an absolute program path and arguments) with the domain and the infected paths added.',
    format: checkDomains,
    default: [] as ScanDomainConfig[],
  },
  webhook: {
    doc: 'URL (http or https) that gets every verdict as a JSON POST; empty: none. A webhook that fails or times out is logged and never holds the quarantine back.',
    format: checkWebhook,
    default: '',
    env: 'VIRTCBT_SCAN_WEBHOOK',
  },
  commandTimeoutSeconds: {
    doc: 'How long a quarantine command may run before it is killed.',
    format: seconds('scan.commandTimeoutSeconds', 3600),
    default: 60,
  },
  shutdownTimeoutSeconds: {
    doc: 'How long action "shutdown" waits for the guest to shut down before it forces the domain off (virsh destroy).',
    format: seconds('scan.shutdownTimeoutSeconds', 3600),
    default: 120,
  },
};

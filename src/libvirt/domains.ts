// Domain look-ups through libvirt: state, live and persistent XML, define. One place that maps
// libvirt's failures to errors that name the domain and the next step.
import { Hypervisor, DomainState as LvState, DomainGetXMLDescFlags, LibvirtError, type Domain } from '@unraid/libvirt';
import { writeFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NotFoundError, VirtcbtError } from '../util/errors.js';
import { parseDomainXml, type DomainXmlInfo } from './domain-xml.js';
import { virsh, VirshError } from './virsh.js';

export type DomainState = 'running' | 'paused' | 'shut off' | 'crashed' | 'pmsuspended' | 'in shutdown' | 'idle' | 'unknown';

export class DomainNotFoundError extends NotFoundError {}

const STATE_NAMES: Record<number, DomainState> = {
  [LvState.NOSTATE]: 'unknown',
  [LvState.RUNNING]: 'running',
  [LvState.BLOCKED]: 'idle',
  [LvState.PAUSED]: 'paused',
  [LvState.SHUTDOWN]: 'in shutdown',
  [LvState.SHUTOFF]: 'shut off',
  [LvState.CRASHED]: 'crashed',
  [LvState.PMSUSPENDED]: 'pmsuspended',
};

/** libvirt cannot be reached (libvirtd down or restarting): the operation may work again later. */
export class LibvirtUnavailableError extends VirtcbtError {}

// What the binding says when its connection to libvirtd broke (libvirtd restarted or died): the
// call did not reach libvirtd, so it is worth one retry on a new connection.
const BROKEN_CONNECTION = /client socket is closed|Cannot (write|recv) data|Broken pipe|Connection reset|End of file while reading|no connection driver|not connected|connection (is )?closed/i;
/** What virsh says when it cannot reach libvirtd, or lost it mid-command. */
const VIRSH_UNREACHABLE = /failed to connect to the hypervisor|Failed to connect socket|Cannot (write|recv) data|End of file while reading|Disconnected from|client socket is closed/i;

/** True when `err` (or a cause of it) says libvirt was unreachable: worth retrying later. */
export function isLibvirtUnreachable(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 8; e = (e as { cause?: unknown }).cause, depth++) {
    if (e instanceof LibvirtUnavailableError) return true;
    if (e instanceof LibvirtError && BROKEN_CONNECTION.test(e.message)) return true;
    if (e instanceof VirshError && VIRSH_UNREACHABLE.test(e.stderr)) return true;
  }
  return false;
}

/** Shortest and longest wait between two attempts to reach libvirtd while it is down (an attempt on a down libvirtd costs a failed connect(): the cap keeps the daemon back within seconds of libvirtd). */
const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 2_000;

export interface LibvirtEvents {
  /** Called once when libvirt stops answering, with the reason. */
  unreachable?: (reason: string) => void;
  /** Called once libvirt answers again after it was unreachable or its connection broke. */
  reconnected?: () => void;
}

/**
 * libvirt access for virtcbt: look-ups, state and XML through the @unraid/libvirt binding (no
 * process per call); define, agent commands and suspend/resume through virsh, which the binding
 * lacks or which need flags it does not expose.
 *
 * libvirtd restarts (package upgrades, admins) break the binding's connection for good ("client
 * socket is closed"). A call that finds it broken opens a new one and is retried once; while
 * libvirtd is down, attempts to reach it are spaced out (RETRY_MIN_MS doubling to RETRY_MAX_MS)
 * and calls in between fail at once with LibvirtUnavailableError; a timer keeps trying, so that
 * `reconnected` fires without waiting for a caller. Each outage is reported once each way.
 */
export class Libvirt {
  private hv?: Promise<Hypervisor>;
  private down?: { reason: string; nextAttempt: number; delayMs: number; timer?: NodeJS.Timeout };
  /** The last connection broke under a call: the next successful open is a reconnection. */
  private broken = false;
  private closed = false;

  constructor(readonly uri: string, private readonly events: LibvirtEvents = {}) {}

  private connect(): Promise<Hypervisor> {
    if (this.hv) return this.hv;
    const down = this.down;
    if (down && Date.now() < down.nextAttempt) {
      return Promise.reject(this.unavailable(down.reason));
    }
    const attempt: Promise<Hypervisor> = (async () => {
      const hv = new Hypervisor({ uri: this.uri });
      try {
        await hv.connectOpen();
      } catch (cause) {
        this.hv = undefined;
        this.wentDown((cause as Error).message);
        throw this.unavailable((cause as Error).message, cause);
      }
      if (this.down || this.broken) {
        clearTimeout(this.down?.timer);
        this.down = undefined;
        this.broken = false;
        this.events.reconnected?.();
      }
      return hv;
    })();
    this.hv = attempt;
    return attempt;
  }

  private unavailable(reason: string, cause?: unknown): LibvirtUnavailableError {
    return new LibvirtUnavailableError(`cannot connect to libvirt at ${this.uri}: ${reason}`, {
      hint: 'Start libvirtd (virtcbtd reconnects by itself), or set libvirt.uri in the config',
      cause,
    });
  }

  private wentDown(reason: string): void {
    const prev = this.down;
    clearTimeout(prev?.timer);
    const delayMs = prev ? Math.min(prev.delayMs * 2, RETRY_MAX_MS) : RETRY_MIN_MS;
    this.down = { reason, nextAttempt: Date.now() + delayMs, delayMs };
    if (!prev) this.events.unreachable?.(reason);
    if (this.closed) return;
    // Keep trying without a caller, so that the daemon learns when libvirt is back.
    this.down.timer = setTimeout(() => void this.connect().catch(() => undefined), delayMs);
    this.down.timer.unref();
  }

  /**
   * Runs `fn` on the connection; if the connection turns out to be broken (libvirtd restarted),
   * once more on a new one. Only for calls that are safe to repeat (look-ups and reads).
   */
  private async call<T>(fn: (hv: Hypervisor) => Promise<T>): Promise<T> {
    const hv = await this.connect();
    try {
      return await fn(hv);
    } catch (err) {
      if (!(err instanceof LibvirtError) || !BROKEN_CONNECTION.test(err.message)) throw err;
      // The old connection is dead: drop it (closing it frees the binding's handle) and reopen.
      if (this.hv && (await this.hv.catch(() => undefined)) === hv) this.hv = undefined;
      void hv.connectClose().catch(() => undefined);
      this.broken = true;
      return fn(await this.connect());
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.down?.timer);
    const hv = this.hv;
    this.hv = undefined;
    if (hv) await (await hv.catch(() => undefined))?.connectClose().catch(() => undefined);
  }

  private async lookup(hv: Hypervisor, domain: string): Promise<Domain> {
    try {
      return await hv.domainLookupByName(domain);
    } catch (cause) {
      if (cause instanceof LibvirtError && /not found|no domain/i.test(cause.message)) {
        throw new DomainNotFoundError(`no libvirt domain named '${domain}'`, {
          domain,
          hint: 'Check the name with `virsh list --all`',
          cause,
        });
      }
      if (cause instanceof LibvirtError && BROKEN_CONNECTION.test(cause.message)) throw cause;
      throw new VirtcbtError(`libvirt look-up failed: ${(cause as Error).message}`, { domain, cause });
    }
  }

  /** A cheap call that tells whether libvirt answers (reconnecting if needed). */
  async check(): Promise<void> {
    await this.call((hv) => hv.connectGetHostname());
  }

  private async run(args: string[], domain?: string, input?: string): Promise<string> {
    try {
      return await virsh(args, { uri: this.uri, domain, input });
    } catch (err) {
      if (err instanceof VirshError && /failed to get domain|Domain not found|no domain with matching name/i.test(err.stderr)) {
        throw new DomainNotFoundError(`no libvirt domain named '${domain}'`, {
          domain,
          hint: 'Check the name with `virsh list --all`',
          cause: err,
        });
      }
      throw err;
    }
  }

  async state(domain: string): Promise<DomainState> {
    const info = await this.call(async (hv) => hv.domainGetInfo(await this.lookup(hv, domain)));
    return STATE_NAMES[info.state] ?? 'unknown';
  }

  async isActive(domain: string): Promise<boolean> {
    const s = await this.state(domain);
    return s === 'running' || s === 'paused' || s === 'in shutdown' || s === 'pmsuspended' || s === 'idle';
  }

  /** Live XML when running (with aliases and source indexes), else the persistent one. */
  async xml(domain: string, opts: { inactive?: boolean } = {}): Promise<string> {
    const flags = opts.inactive ? DomainGetXMLDescFlags.INACTIVE : DomainGetXMLDescFlags.NONE;
    return this.call(async (hv) => hv.domainGetXMLDesc(await this.lookup(hv, domain), flags));
  }

  async info(domain: string, opts: { inactive?: boolean } = {}): Promise<DomainXmlInfo> {
    return parseDomainXml(await this.xml(domain, opts));
  }

  async isPersistent(domain: string): Promise<boolean> {
    const out = await this.run(['dominfo', domain], domain);
    return /^Persistent:\s+yes/m.test(out);
  }

  async define(xml: string, domain?: string): Promise<void> {
    const dir = await mkdtemp(join(tmpdir(), 'virtcbt-define-'));
    try {
      const f = join(dir, 'domain.xml');
      await writeFile(f, xml);
      await this.run(['define', f], domain);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  async listAll(): Promise<string[]> {
    return this.call(async (hv) => Promise.all((await hv.connectListAllDomains()).map((d: Domain) => hv.domainGetName(d))));
  }

  async agentCommand(domain: string, command: object, timeoutSec = 10): Promise<unknown> {
    const out = await this.run(['qemu-agent-command', domain, JSON.stringify(command), '--timeout', String(timeoutSec)], domain);
    return JSON.parse(out) as unknown;
  }

  async suspend(domain: string): Promise<void> { await this.run(['suspend', domain], domain); }
  async resume(domain: string): Promise<void> { await this.run(['resume', domain], domain); }
}

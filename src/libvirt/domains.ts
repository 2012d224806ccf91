// Domain look-ups through libvirt: state, live and persistent XML, define. One place that maps
// libvirt's failures to errors that name the domain and the next step.
import { Hypervisor, DomainState as LvState, DomainGetXMLDescFlags, LibvirtError, type Domain } from '@unraid/libvirt';
import { writeFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VirtcbtError } from '../util/errors.js';
import { parseDomainXml, type DomainXmlInfo } from './domain-xml.js';
import { virsh, VirshError } from './virsh.js';

export type DomainState = 'running' | 'paused' | 'shut off' | 'crashed' | 'pmsuspended' | 'in shutdown' | 'idle' | 'unknown';

export class DomainNotFoundError extends VirtcbtError {
  readonly exitCode = 4;
}

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

/**
 * libvirt access for virtcbt: look-ups, state and XML through the @unraid/libvirt binding (no
 * process per call); define, agent commands and suspend/resume through virsh, which the binding
 * lacks or which need flags it does not expose.
 */
export class Libvirt {
  private hv?: Promise<Hypervisor>;

  constructor(readonly uri: string) {}

  private connect(): Promise<Hypervisor> {
    this.hv ??= (async () => {
      const hv = new Hypervisor({ uri: this.uri });
      try {
        await hv.connectOpen();
      } catch (cause) {
        this.hv = undefined;
        throw new VirtcbtError(`cannot connect to libvirt at ${this.uri}: ${(cause as Error).message}`, {
          hint: 'Start libvirtd, or set libvirt.uri in the config',
          cause,
        });
      }
      return hv;
    })();
    return this.hv;
  }

  async close(): Promise<void> {
    const hv = this.hv;
    this.hv = undefined;
    if (hv) await (await hv).connectClose().catch(() => undefined);
  }

  private async lookup(domain: string): Promise<{ hv: Hypervisor; dom: Domain }> {
    const hv = await this.connect();
    try {
      return { hv, dom: await hv.domainLookupByName(domain) };
    } catch (cause) {
      if (cause instanceof LibvirtError && /not found|no domain/i.test(cause.message)) {
        throw new DomainNotFoundError(`no libvirt domain named '${domain}'`, {
          domain,
          hint: 'Check the name with `virsh list --all`',
          cause,
        });
      }
      throw new VirtcbtError(`libvirt look-up failed: ${(cause as Error).message}`, { domain, cause });
    }
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
    const { hv, dom } = await this.lookup(domain);
    const info = await hv.domainGetInfo(dom);
    return STATE_NAMES[info.state] ?? 'unknown';
  }

  async isActive(domain: string): Promise<boolean> {
    const s = await this.state(domain);
    return s === 'running' || s === 'paused' || s === 'in shutdown' || s === 'pmsuspended' || s === 'idle';
  }

  /** Live XML when running (with aliases and source indexes), else the persistent one. */
  async xml(domain: string, opts: { inactive?: boolean } = {}): Promise<string> {
    const { hv, dom } = await this.lookup(domain);
    return hv.domainGetXMLDesc(dom, opts.inactive ? DomainGetXMLDescFlags.INACTIVE : DomainGetXMLDescFlags.NONE);
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
    const hv = await this.connect();
    const doms = await hv.connectListAllDomains();
    return Promise.all(doms.map((d: Domain) => hv.domainGetName(d)));
  }

  async agentCommand(domain: string, command: object, timeoutSec = 10): Promise<unknown> {
    const out = await this.run(['qemu-agent-command', domain, JSON.stringify(command), '--timeout', String(timeoutSec)], domain);
    return JSON.parse(out) as unknown;
  }

  async suspend(domain: string): Promise<void> { await this.run(['suspend', domain], domain); }
  async resume(domain: string): Promise<void> { await this.run(['resume', domain], domain); }
}

// QMP through libvirt's own monitor (`virsh qemu-monitor-command`): the fallback for a running
// domain whose dedicated virtcbt socket takes effect only after its next restart. It runs
// commands but sees no events; libvirt marks the domain "tainted: custom-monitor".
import { QmpCommandError, type ExecuteOptions, type QmpExecutor } from '../qmp/index.js';
import { virsh } from './virsh.js';

export class VirshMonitor implements QmpExecutor {
  constructor(readonly uri: string, readonly domain: string) {}

  async execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: ExecuteOptions = {}): Promise<T> {
    const cmd = JSON.stringify(args === undefined ? { execute: command } : { execute: command, arguments: args });
    const out = await virsh(['qemu-monitor-command', this.domain, cmd], {
      uri: this.uri,
      domain: this.domain,
      timeoutMs: opts.timeoutMs,
      signal: opts.signal,
    });
    const reply = JSON.parse(out) as { return?: T; error?: { class: string; desc: string } };
    if (reply.error) throw new QmpCommandError(command, args, reply.error, { domain: this.domain });
    return reply.return as T;
  }
}

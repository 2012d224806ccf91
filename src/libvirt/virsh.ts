// Runs virsh for what @unraid/libvirt lacks (define from XML, agent commands, events), with
// errors that name the domain and keep virsh's own message.
import { execa } from 'execa';
import { VirtcbtError } from '../util/errors.js';

export class VirshError extends VirtcbtError {
  readonly stderr: string;
  /** virsh's own exit status (not the CLI exit code the error ends in: that is `exitCode`). */
  readonly virshExitCode?: number;
  constructor(message: string, opts: { domain?: string; stderr: string; virshExitCode?: number; hint?: string; cause?: unknown }) {
    super(message, opts);
    this.stderr = opts.stderr;
    this.virshExitCode = opts.virshExitCode;
  }
}

/** virsh's "error: ..." lines without the prefix: the part worth showing an admin. */
export function virshMessage(stderr: string): string {
  const lines = stderr.split('\n').map((l) => l.replace(/^error:\s*/, '').trim()).filter(Boolean);
  return lines.join('; ') || 'virsh failed';
}

export interface VirshOptions {
  uri: string;
  domain?: string;
  input?: string;
  timeoutMs?: number;
  signal?: AbortSignal;
}

export async function virsh(args: string[], opts: VirshOptions): Promise<string> {
  const r = await execa('virsh', ['-c', opts.uri, ...args], {
    input: opts.input,
    timeout: opts.timeoutMs ?? 60_000,
    cancelSignal: opts.signal,
    reject: false,
    stripFinalNewline: true,
  });
  if (r.exitCode !== 0 || r.failed) {
    const msg = virshMessage(r.stderr ?? '') || r.shortMessage || 'virsh failed';
    throw new VirshError(`virsh ${args[0]}: ${msg}`, {
      domain: opts.domain,
      stderr: r.stderr ?? '',
      virshExitCode: r.exitCode,
      hint: /Failed to connect|failed to connect to the hypervisor/i.test(msg)
        ? `Is libvirtd running and is ${opts.uri} the right URI (libvirt.uri in the config)?`
        : undefined,
      cause: r,
    });
  }
  return r.stdout;
}

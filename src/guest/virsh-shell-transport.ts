// Guest agent through one long-lived interactive `virsh` per transport: each call costs a few
// milliseconds instead of a virsh process start and libvirt connection (~40 ms). Used where
// latency matters — the freeze and thaw around a backup's snapshot, which the guest feels.
// Commands whose JSON or domain name virsh's own shell parsing could mangle go through LibvirtTransport instead.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { TimeoutError } from '../util/errors.js';
import { abortReason } from '../util/abort.js';
import { AgentCommandError, AgentProtocolError } from './errors.js';
import { toReply } from './framing.js';
import { LibvirtTransport, explainNotRunning, virshAgentError } from './libvirt-transport.js';
import type { AgentCallOptions, AgentTransport } from './transport.js';

export interface VirshShellTransportOptions {
  uri?: string;
  /** Default deadline per command. Default 30 s. */
  commandTimeoutMs?: number;
}

// virsh's shell prompt: every command's output ends where the next prompt begins.
const PROMPT = 'virsh # ';
/** Domain names virsh's shell takes as one plain word; any other goes through LibvirtTransport (no quoting games). */
const PLAIN_NAME = /^[A-Za-z0-9._+-]+$/;

export class VirshShellTransport implements AgentTransport {
  readonly description: string;
  private readonly uri: string;
  private readonly commandTimeoutMs: number;
  private readonly fallback: LibvirtTransport;
  private proc?: ChildProcessWithoutNullStreams;
  private out = '';
  private err = '';
  private wake?: () => void;
  private queue: Promise<unknown> = Promise.resolve();
  private seq = 0;

  constructor(readonly domain: string, opts: VirshShellTransportOptions = {}) {
    this.uri = opts.uri ?? 'qemu:///system';
    this.commandTimeoutMs = opts.commandTimeoutMs ?? 30_000;
    this.fallback = new LibvirtTransport(domain, { uri: this.uri, commandTimeoutMs: this.commandTimeoutMs });
    this.description = `libvirt domain ${domain} (virsh shell)`;
  }

  private shell(): ChildProcessWithoutNullStreams {
    if (this.proc && this.proc.exitCode === null && this.proc.signalCode === null) return this.proc;
    const p = spawn('virsh', ['-q', '-c', this.uri], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.out = '';
    this.err = '';
    p.stdout.on('data', (b: Buffer) => { this.out += b.toString(); this.wake?.(); });
    p.stderr.on('data', (b: Buffer) => { this.err += b.toString(); this.wake?.(); });
    p.on('exit', () => this.wake?.());
    p.on('error', () => this.wake?.());
    p.stdin.on('error', () => undefined);
    this.proc = p;
    return p;
  }

  /** Starts the virsh process now (its start-up then overlaps other work). */
  warmUp(): void {
    this.shell();
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: AgentCallOptions = {}): Promise<T> {
    const run = this.queue.then(() => this.run<T>(command, args, opts));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async run<T>(command: string, args: Record<string, unknown> | undefined, opts: AgentCallOptions): Promise<T> {
    const what = `guest agent ${command}`;
    if (opts.signal?.aborted) throw abortReason(opts.signal, what);
    const json = JSON.stringify(args === undefined ? { execute: command } : { execute: command, arguments: args });
    // Inside single quotes virsh takes everything literally, up to the next quote.
    if (json.includes("'") || json.includes('\n') || !PLAIN_NAME.test(this.domain)) return this.fallback.execute<T>(command, args, opts);
    const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
    const p = this.shell();
    const marker = `vcbt-${process.pid}-${++this.seq}`;
    const timeout = Number.isFinite(timeoutMs) ? `--timeout ${Math.max(1, Math.ceil(timeoutMs / 1000))}` : '--block';
    // Commands run one at a time: what is left over belongs to the previous one (a late prompt).
    this.out = '';
    this.err = '';
    p.stdin.write(`qemu-agent-command ${this.domain} '${json}' ${timeout}\necho --err ${marker}\necho ${marker}\n`);
    const deadline = Number.isFinite(timeoutMs) ? Date.now() + timeoutMs + 10_000 : Infinity;
    const errMark = `error: ${marker}`;
    for (;;) {
      const out = this.out;
      const err = this.err;
      // The marker shows three times on stdout (two echoed command lines, then echo's output).
      if (out.split(marker).length > 3 && err.includes(errMark)) break;
      if (p.exitCode !== null || p.signalCode !== null) {
        this.proc = undefined;
        return this.fallback.execute<T>(command, args, opts);
      }
      if (opts.signal?.aborted || Date.now() > deadline) {
        p.kill('SIGKILL');
        this.proc = undefined;
        if (opts.signal?.aborted) throw abortReason(opts.signal, what);
        throw new TimeoutError(`${what} on domain ${this.domain}: virsh did not answer within ${timeoutMs} ms`, {
          domain: this.domain, hint: 'check that libvirtd is running and responsive',
        });
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 50);
        this.wake = () => { clearTimeout(t); resolve(); };
      });
      this.wake = undefined;
    }
    const { out, err } = this;
    // After libvirtd restarted, virsh's shell reconnects by itself and says so on stderr; the
    // command then ran on the new connection, so those two lines are news, not the command's error.
    const stderr = err.slice(0, err.indexOf(errMark)).split('\n')
      .filter((l) => !/^error: (Disconnected from \S+ due to |Reconnected to the hypervisor)/.test(l.trim())).join('\n').trim();
    // Output: after virsh's echo of our command line, up to the prompt of `echo --err`.
    let body = out.slice(0, out.indexOf(`${PROMPT}echo --err ${marker}`));
    const echoed = body.indexOf('qemu-agent-command ');
    if (echoed >= 0) body = body.slice(body.indexOf('\n', echoed) + 1);
    const text = body.replaceAll(PROMPT, '').trim();
    if (stderr) throw await explainNotRunning(virshAgentError(stderr, { domain: this.domain, uri: this.uri, command }), this.domain, this.uri);
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (err2) {
      throw new AgentProtocolError(`${what}: virsh printed something that is not JSON: ${text.slice(0, 120)}`, { domain: this.domain, cause: err2 });
    }
    const reply = toReply(parsed);
    if (reply.kind === 'error') throw new AgentCommandError(command, reply.error, { domain: this.domain });
    return reply.value as T;
  }

  async close(): Promise<void> {
    const p = this.proc;
    this.proc = undefined;
    if (!p || p.exitCode !== null) return;
    const gone = new Promise<void>((r) => p.once('exit', () => r()));
    p.stdin.end('quit\n');
    const t = setTimeout(() => p.kill('SIGKILL'), 2_000);
    await gone;
    clearTimeout(t);
  }
}

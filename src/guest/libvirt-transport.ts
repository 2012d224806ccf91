// Guest agent through libvirt (`virsh qemu-agent-command`): libvirt owns the agent channel of its domains.
import { execa } from 'execa';
import { TimeoutError } from '../util/errors.js';
import { abortReason } from '../util/abort.js';
import { AgentCommandError, AgentError, AgentProtocolError, AgentUnavailableError } from './errors.js';
import { toReply } from './framing.js';
import type { AgentCallOptions, AgentTransport } from './transport.js';

export interface LibvirtTransportOptions {
  /** libvirt connection URI. Default qemu:///system. */
  uri?: string;
  /** Default deadline per command. Default 30 s. */
  commandTimeoutMs?: number;
  /** The virsh binary. Default `virsh` from PATH. */
  virsh?: string;
}

// virsh takes whole seconds; it also needs time to start and connect to libvirtd, so the process
// itself gets this much longer than the agent deadline before it is killed.
const VIRSH_GRACE_MS = 10_000;

const AGENT_HINT =
  'install and start qemu-guest-agent in the guest, and give the domain the agent channel ' +
  "(<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>)";

const NOT_RUNNING_HINT = 'start the domain first';

/**
 * libvirt answers "domain is not running" for a paused (suspended) domain too, where "start the
 * domain first" is wrong: asks libvirt for the state and, if paused, says to resume it instead.
 */
export async function explainNotRunning<E extends Error>(err: E, domain: string, uri: string, virsh = 'virsh'): Promise<E | AgentUnavailableError> {
  if (!(err instanceof AgentUnavailableError) || err.hint !== NOT_RUNNING_HINT) return err;
  const r = await execa(virsh, ['-c', uri, 'domstate', domain], { reject: false, stdin: 'ignore', timeout: 10_000 });
  if (r.exitCode !== 0 || r.stdout.trim() !== 'paused') return err;
  return new AgentUnavailableError(`domain ${domain} is paused: its guest agent cannot answer until it runs again`, {
    domain, hint: `resume it with \`virsh resume ${domain}\``, cause: err,
  });
}

export class LibvirtTransport implements AgentTransport {
  readonly description: string;
  private readonly uri: string;
  private readonly commandTimeoutMs: number;
  private readonly virsh: string;

  constructor(
    readonly domain: string,
    opts: LibvirtTransportOptions = {},
  ) {
    this.uri = opts.uri ?? 'qemu:///system';
    this.commandTimeoutMs = opts.commandTimeoutMs ?? 30_000;
    this.virsh = opts.virsh ?? 'virsh';
    this.description = `libvirt domain ${domain}`;
  }

  async execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: AgentCallOptions = {}): Promise<T> {
    const what = `guest agent ${command}`;
    if (opts.signal?.aborted) throw abortReason(opts.signal, what);
    const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
    const json = JSON.stringify(args === undefined ? { execute: command } : { execute: command, arguments: args });
    const argv = ['-c', this.uri, 'qemu-agent-command', this.domain, json];
    if (Number.isFinite(timeoutMs)) argv.push('--timeout', String(Math.max(1, Math.ceil(timeoutMs / 1000))));
    else argv.push('--block');
    const r = await execa(this.virsh, argv, {
      reject: false,
      stdin: 'ignore',
      cancelSignal: opts.signal,
      timeout: Number.isFinite(timeoutMs) ? timeoutMs + VIRSH_GRACE_MS : undefined,
    });
    if (r.isCanceled) throw abortReason(opts.signal!, what);
    if (r.timedOut) {
      throw new TimeoutError(`${what} on domain ${this.domain}: virsh did not return within ${timeoutMs + VIRSH_GRACE_MS} ms`, {
        domain: this.domain,
        hint: 'check that libvirtd is running and responsive',
      });
    }
    if (r.failed) {
      const err = virshAgentError(r.stderr || r.message || '', { domain: this.domain, uri: this.uri, command, exitCode: r.exitCode });
      throw await explainNotRunning(err, this.domain, this.uri, this.virsh);
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(r.stdout);
    } catch (err) {
      throw new AgentProtocolError(`${what}: virsh printed something that is not JSON: ${r.stdout.slice(0, 120)}`, {
        domain: this.domain,
        cause: err,
      });
    }
    const reply = toReply(parsed);
    if (reply.kind === 'error') throw new AgentCommandError(command, reply.error, { domain: this.domain });
    return reply.value as T;
  }

  async close(): Promise<void> {
    // Nothing held: every call is its own virsh process.
  }
}

/**
 * Turns virsh's "error: ..." lines from qemu-agent-command into the error an admin can act on.
 * The texts are libvirt's (9.0): "argument unsupported: QEMU guest agent is not configured",
 * "Guest agent is not responding: QEMU guest agent is not connected", "internal error: unable to
 * execute QEMU agent command 'X': DESC" (newer: "guest agent command failed: ...").
 */
export function virshAgentError(
  stderr: string,
  where: { domain: string; uri: string; command: string; exitCode?: number },
): AgentError | TimeoutError {
  const { domain, uri, command, exitCode } = where;
  const text = stderr
    .split('\n')
    .map((l) => l.replace(/^error:\s*/, '').trim())
    .filter(Boolean)
    .join('; ');
  const ctx = { domain };
  const m = /unable to execute QEMU agent command '([^']+)': (.*)$/.exec(text);
  if (m) return new AgentCommandError(m[1] ?? command, { desc: m[2] ?? text }, ctx);
  if (/not configured/i.test(text)) {
    return new AgentUnavailableError(`domain ${domain} has no guest agent channel: ${text}`, { ...ctx, hint: AGENT_HINT });
  }
  if (/agent is not responding|agent is not connected|agent not available/i.test(text)) {
    return new AgentUnavailableError(`guest agent of domain ${domain} is not responding: ${text}`, { ...ctx, hint: AGENT_HINT });
  }
  if (/timed? ?out|timeout/i.test(text)) {
    return new TimeoutError(`guest agent ${command} on domain ${domain} timed out: ${text}`, {
      ...ctx,
      hint: 'the guest may be busy or hung; the command may still complete in the guest',
    });
  }
  if (/domain is not running/i.test(text)) {
    return new AgentUnavailableError(`domain ${domain} is not running: ${text}`, { ...ctx, hint: NOT_RUNNING_HINT });
  }
  if (/failed to get domain|domain not found|no domain with matching/i.test(text)) {
    return new AgentUnavailableError(`domain ${domain} not found on ${uri}: ${text}`, {
      ...ctx,
      hint: `check the name with: virsh -c ${uri} list --all`,
    });
  }
  if (/failed to connect to the hypervisor|Failed to connect socket|Failed to reconnect|no valid connection/i.test(text)) {
    return new AgentUnavailableError(`cannot reach libvirt at ${uri}: ${text}`, { ...ctx, hint: 'start libvirtd (or check the URI)' });
  }
  return new AgentError(`virsh qemu-agent-command ${command} on domain ${domain} failed (exit ${exitCode ?? '?'}): ${text}`, ctx);
}

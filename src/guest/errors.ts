// The guest-agent error family: the agent refused, is unreachable, broke the protocol, or left filesystems frozen.
import { EXIT, VirtcbtError, type ErrorContext } from '../util/errors.js';

/** Base of every guest-agent failure (deadlines excepted: those are util's TimeoutError). */
export class AgentError extends VirtcbtError {}

/** The agent answered a command with an error. */
export class AgentCommandError extends AgentError {
  readonly command: string;
  /** The agent's error class (GenericError, CommandNotFound...), undefined when libvirt did not pass it on. */
  readonly errorClass: string | undefined;
  readonly desc: string;

  constructor(command: string, error: { class?: string; desc: string }, ctx: ErrorContext = {}) {
    super(`guest agent ${command} failed: ${error.desc}${error.class ? ` (${error.class})` : ''}`, ctx);
    this.command = command;
    this.errorClass = error.class;
    this.desc = error.desc;
  }
}

/** No agent to talk to: socket missing or closed, agent not running in the guest, channel not configured. */
export class AgentUnavailableError extends AgentError {}

/**
 * The agent (or what answers in its place) sent something that is not the agent protocol.
 * An AgentError (callers catch the agent family as one), with util's ProtocolError's exit code.
 */
export class AgentProtocolError extends AgentError {
  static override readonly defaultExitCode: number = EXIT.PROTOCOL;
}

/** A program run with guest-exec exited non-zero or died of a signal (only when asked to reject). */
export class GuestExecError extends AgentError {
  constructor(
    message: string,
    /** The guest program's exit status (the CLI exit code this error ends in is `exitCode`). */
    readonly programExitCode: number | undefined,
    readonly signal: number | undefined,
    readonly stderr: string,
    ctx: ErrorContext = {},
  ) {
    super(message, ctx);
  }
}

/**
 * Thawing the guest's filesystems failed. The guest may still be frozen: its writes hang until
 * someone thaws it. `original` is the error that ended the frozen section, if any.
 */
export class ThawFailedError extends AgentError {
  constructor(
    readonly thawError: unknown,
    readonly original: unknown,
    ctx: ErrorContext = {},
  ) {
    super(
      `${original === undefined ? '' : `${describe(original)}; then `}thawing the guest filesystems failed: ${describe(thawError)}`,
      {
        ...ctx,
        cause: thawError,
        hint:
          ctx.hint ??
          `the guest may still be frozen: thaw it now (virsh domfsthaw ${ctx.domain ?? 'DOMAIN'}, or guest-fsfreeze-thaw through the agent)`,
      },
    );
  }
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

// The QMP error family: every failure of a QMP conversation is a QmpError, so callers can catch one type.
import { EXIT, VirtcbtError, type ErrorContext } from '../util/errors.js';

/** Base of every QMP failure (timeouts excepted: those are util's TimeoutError, like every deadline in virtcbt). */
export class QmpError extends VirtcbtError {}

/** QEMU answered a command with `{"error": {"class", "desc"}}`. */
export class QmpCommandError extends QmpError {
  /** QMP's error class: GenericError, CommandNotFound, DeviceNotFound, DeviceNotActive, KVMMissingCap. */
  readonly errorClass: string;
  /** QEMU's own human-readable reason, unchanged. */
  readonly desc: string;
  readonly command: string;
  /** A short rendering of the arguments for logs; never the full payload (it may hold secrets or be large). */
  readonly argsSummary: string;

  constructor(
    command: string,
    args: Record<string, unknown> | undefined,
    error: { class: string; desc: string },
    ctx: ErrorContext = {},
  ) {
    const summary = summarizeArgs(args);
    super(`QMP ${command}${summary ? ` ${summary}` : ''} failed: ${error.desc} (${error.class})`, ctx);
    this.errorClass = error.class;
    this.desc = error.desc;
    this.command = command;
    this.argsSummary = summary;
  }

  override toJSON(): Record<string, unknown> {
    return { ...super.toJSON(), command: this.command, class: this.errorClass, desc: this.desc };
  }
}

/**
 * The peer broke the protocol: a frame that is not JSON, a reply to an id we never sent, no greeting.
 * A QmpError (callers catch the QMP family as one), with util's ProtocolError's exit code.
 */
export class QmpProtocolError extends QmpError {
  static override readonly defaultExitCode: number = EXIT.PROTOCOL;
}

/** The socket is missing, refused, or closed; calls in flight are rejected with this. */
export class QmpConnectionError extends QmpError {}

// Long enough to identify the call in a log line, short enough not to dump a whole blockdev tree.
const SUMMARY_MAX = 200;

/** `{node: "data", name: "b1"}` → `node=data name=b1`, nested values as compact JSON, cut at SUMMARY_MAX. */
export function summarizeArgs(args: Record<string, unknown> | undefined): string {
  if (!args) return '';
  const parts: string[] = [];
  for (const [k, v] of Object.entries(args)) {
    const text = typeof v === 'string' ? v : JSON.stringify(v);
    parts.push(`${k}=${text}`);
  }
  const s = parts.join(' ');
  return s.length > SUMMARY_MAX ? `${s.slice(0, SUMMARY_MAX - 1)}…` : s;
}

// One error family for virtcbt: every error can name the domain and disk it concerns and the
// admin's next step, keeps the low-level reason as `cause`, and carries the CLI exit code it ends in.

/**
 * The CLI's exit codes (documented in `virtcbt --help` and the README). Errors carry theirs from
 * the daemon to the CLI: the control API sends `exitCode` and the CLI exits with it.
 */
export const EXIT = {
  OK: 0,
  FAILED: 1,
  USAGE: 2,
  DAEMON_DOWN: 3,
  NOT_FOUND: 4,
  PROTOCOL: 5,
  /** `virtcbt scan` found malware (not a failure of the command). */
  INFECTED: 10,
  /**
   * `virtcbt scan` found nothing, but did not look at everything (a filesystem it cannot read, a
   * limit hit, a skipped file): not the same as clean, so a script cannot take it for clean.
   */
  INCOMPLETE: 11,
} as const;

export interface ErrorContext {
  domain?: string;
  disk?: string;
  /** What the admin should do next, in one sentence. */
  hint?: string;
  cause?: unknown;
  /** Overrides the class's exit code: a wrapper keeps the code of the error it wraps. */
  exitCode?: number;
}

export class VirtcbtError extends Error {
  /** The exit code an error of this class ends the CLI with, unless the constructor is given one. */
  static readonly defaultExitCode: number = EXIT.FAILED;

  readonly domain?: string;
  readonly disk?: string;
  readonly hint?: string;
  readonly exitCode: number;

  constructor(message: string, ctx: ErrorContext = {}) {
    super(message, ctx.cause === undefined ? undefined : { cause: ctx.cause });
    this.name = new.target.name;
    this.domain = ctx.domain;
    this.disk = ctx.disk;
    this.hint = ctx.hint;
    this.exitCode = ctx.exitCode ?? (new.target as typeof VirtcbtError).defaultExitCode;
  }

  /** "domain vm1, disk vda: message. hint" — the line the CLI prints. */
  describe(): string {
    const where = [this.domain && `domain ${this.domain}`, this.disk && `disk ${this.disk}`]
      .filter(Boolean)
      .join(', ');
    return `${where ? where + ': ' : ''}${this.message}${this.hint ? `. ${this.hint}` : ''}`;
  }

  toJSON(): Record<string, unknown> {
    return {
      error: this.name,
      message: this.message,
      domain: this.domain,
      disk: this.disk,
      hint: this.hint,
      cause: this.cause instanceof Error ? this.cause.message : this.cause,
    };
  }
}

/** Input from the user or a config file that cannot be used; nothing was changed. */
export class UsageError extends VirtcbtError {
  static override readonly defaultExitCode: number = EXIT.USAGE;
}

/** A domain, disk, consumer or backup the caller named does not exist (or cannot be used as one). */
export class NotFoundError extends VirtcbtError {
  static override readonly defaultExitCode: number = EXIT.NOT_FOUND;
}

/** A peer (NBD server, QEMU) broke its protocol or lacks what we need from it. */
export class ProtocolError extends VirtcbtError {
  static override readonly defaultExitCode: number = EXIT.PROTOCOL;
}

/** A deadline passed or the caller aborted. */
export class TimeoutError extends VirtcbtError {}

/** The exit code `err` ends the CLI with: its own in the family, `failed` for anything else. */
export function exitCodeOf(err: unknown): number {
  return err instanceof VirtcbtError ? err.exitCode : EXIT.FAILED;
}

export function errorMessage(err: unknown): string {
  if (err instanceof VirtcbtError) return err.describe();
  if (err instanceof Error) return err.message;
  return String(err);
}

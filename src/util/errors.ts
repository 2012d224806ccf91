// One error family for virtcbt: every error can name the domain and disk it concerns and the
// admin's next step, and keeps the low-level reason as `cause`.

export interface ErrorContext {
  domain?: string;
  disk?: string;
  /** What the admin should do next, in one sentence. */
  hint?: string;
  cause?: unknown;
}

export class VirtcbtError extends Error {
  readonly domain?: string;
  readonly disk?: string;
  readonly hint?: string;

  constructor(message: string, ctx: ErrorContext = {}) {
    super(message, ctx.cause === undefined ? undefined : { cause: ctx.cause });
    this.name = new.target.name;
    this.domain = ctx.domain;
    this.disk = ctx.disk;
    this.hint = ctx.hint;
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
export class UsageError extends VirtcbtError {}

/** A deadline passed or the caller aborted. */
export class TimeoutError extends VirtcbtError {}

export function errorMessage(err: unknown): string {
  if (err instanceof VirtcbtError) return err.describe();
  if (err instanceof Error) return err.message;
  return String(err);
}

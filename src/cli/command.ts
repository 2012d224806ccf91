// The shape of a CLI subcommand. Each lives in src/cli/commands/ and is registered, with its name
// and summary, in src/cli/commands/index.ts.
import type { VirtcbtConfig } from '../config/index.js';

export interface CliIo {
  /** Data for scripts and humans: stdout. */
  out(line: string): void;
  /** Messages, warnings, progress: stderr. */
  err(line: string): void;
  /** True when stderr is a terminal (progress bars only then). */
  isTty: boolean;
}

export interface CommandContext {
  argv: string[];
  io: CliIo;
  /** Loaded lazily so `--help` works with a broken config. */
  config(): VirtcbtConfig;
}

export interface Command {
  usage: string;
  /** Returns the exit code. */
  run(ctx: CommandContext): Promise<number>;
}

/** Exit codes, documented in `virtcbt --help`: one table, beside the error family that carries them. */
export { EXIT } from '../util/errors.js';

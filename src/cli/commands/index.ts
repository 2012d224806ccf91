// The registry of CLI subcommands, in the order `virtcbt --help` lists them.
import type { Command } from '../command.js';

export const commands: Command[] = [];

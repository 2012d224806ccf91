// The registry of CLI subcommands, in the order `virtcbt --help` lists them.
import type { Command } from '../command.js';
import { backupCommand } from './backup.js';
import { consumerCommand, passCommand } from './consumer.js';
import { installCommand } from './install.js';
import { nbdCommand } from './nbd.js';
import { listCommand, pruneCommand, restoreCommand, verifyCommand } from './repo.js';
import { changesCommand, disableCommand, enableCommand, reconcileCommand, statusCommand } from './tracking.js';

export const commands: Command[] = [
  enableCommand,
  disableCommand,
  statusCommand,
  consumerCommand,
  changesCommand,
  passCommand,
  reconcileCommand,
  backupCommand,
  listCommand,
  verifyCommand,
  restoreCommand,
  pruneCommand,
  installCommand,
  nbdCommand,
];

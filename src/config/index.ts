// Loads virtcbt's configuration: schema defaults, then /etc/virtcbt/config.json (or --config
// FILE), then VIRTCBT_* environment variables. Malformed input is a UsageError naming the file.
import { createRequire } from 'node:module';
import type convictType from 'convict';
import { existsSync } from 'node:fs';
import { schema, type VirtcbtConfig } from '../../config/schema.js';
import { UsageError } from '../util/errors.js';

export type { BackupJobConfig, VirtcbtConfig } from '../../config/schema.js';

export const DEFAULT_CONFIG_FILE = '/etc/virtcbt/config.json';

export interface LoadOptions {
  /** An explicit file (--config): must exist. */
  file?: string;
  /** Environment to read VIRTCBT_* from (tests pass their own). */
  env?: NodeJS.ProcessEnv;
}

// convict is loaded on first use: commands that need no configuration (`virtcbt nbd map`) should
// not pay for it at start-up.
const require = createRequire(import.meta.url);

export function loadConfig(opts: LoadOptions = {}): VirtcbtConfig {
  const convict = require('convict') as typeof convictType;
  const env = opts.env ?? process.env;
  const conf = convict(schema, { env: env as Record<string, string> });
  const file = opts.file ?? env.VIRTCBT_CONFIG ?? (existsSync(DEFAULT_CONFIG_FILE) ? DEFAULT_CONFIG_FILE : undefined);
  if (file) {
    if (!existsSync(file)) throw new UsageError(`config file ${file} does not exist`, { hint: 'Pass an existing file to --config' });
    try {
      conf.loadFile(file);
    } catch (cause) {
      throw new UsageError(`config file ${file} is not valid JSON: ${(cause as Error).message}`, { cause, hint: 'Fix the file; nothing was changed' });
    }
  }
  try {
    conf.validate({ allowed: 'strict' });
  } catch (cause) {
    throw new UsageError(`invalid configuration${file ? ` in ${file}` : ''}: ${(cause as Error).message}`, { cause, hint: 'Fix the setting; nothing was changed' });
  }
  return conf.getProperties();
}

// Loads virtcbt's configuration: schema defaults, then /etc/virtcbt/config.json (or --config
// FILE), then VIRTCBT_* environment variables. Malformed input is a UsageError naming the file.
import { createRequire } from 'node:module';
import type convictType from 'convict';
import { existsSync } from 'node:fs';
import { schema, type VirtcbtConfig } from '../../config/schema.js';
import { UsageError } from '../util/errors.js';
import { publishedConfigFor } from './effective.js';

export type { BackupJobConfig, ScanJobConfig, SyncJobConfig, VirtcbtConfig } from '../../config/schema.js';

export { publishEffectiveConfig } from './effective.js';

export const DEFAULT_CONFIG_FILE = '/etc/virtcbt/config.json';

export interface LoadOptions {
  /** An explicit file (--config): must exist. */
  file?: string;
  /** Environment to read VIRTCBT_* from (tests pass their own). */
  env?: NodeJS.ProcessEnv;
  /**
   * Take the configuration virtcbtd published for this very file when there is one (see
   * effective.ts): the CLI does, to skip loading convict.
   */
  published?: boolean;
}

// convict is loaded on first use: commands that need no configuration (`virtcbt nbd map`) should
// not pay for it at start-up.
const require = createRequire(import.meta.url);

/** Schema leaves (settings) have a `default`; anything else is a group of settings. */
function isSetting(node: object): node is { default: unknown; env?: string } {
  return 'default' in node;
}

/** Every VIRTCBT_* variable the schema reads. */
function envNames(node: object, out: string[] = []): string[] {
  for (const v of Object.values(node)) {
    if (typeof v !== 'object' || v === null) continue;
    if (isSetting(v)) { if (v.env) out.push(v.env); } else envNames(v, out);
  }
  return out;
}

/** The schema's defaults as a fresh object (what convict returns when nothing overrides them). */
export function schemaDefaults(node: object = schema): VirtcbtConfig {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(node)) {
    if (typeof v !== 'object' || v === null) continue;
    out[k] = isSetting(v) ? structuredClone(v.default) : schemaDefaults(v);
  }
  return out as unknown as VirtcbtConfig;
}

/** The file loadConfig reads: --config, else $VIRTCBT_CONFIG, else the default one if it exists. */
export function configFile(opts: LoadOptions = {}): string | undefined {
  const env = opts.env ?? process.env;
  return opts.file ?? env.VIRTCBT_CONFIG ?? (existsSync(DEFAULT_CONFIG_FILE) ? DEFAULT_CONFIG_FILE : undefined);
}

/** True when a VIRTCBT_* variable overrides a setting. */
export function hasEnvOverrides(env: NodeJS.ProcessEnv = process.env): boolean {
  return envNames(schema).some((n) => env[n] !== undefined);
}

export function loadConfig(opts: LoadOptions = {}): VirtcbtConfig {
  const env = opts.env ?? process.env;
  const file = configFile(opts);
  const overridden = hasEnvOverrides(env);
  // No file and no variable: the defaults, without loading convict (~30 ms of start-up).
  if (!file && !overridden) return schemaDefaults();
  if (file && !overridden && opts.published) {
    const published = publishedConfigFor(file, schemaDefaults().daemon.socket);
    if (published) return published;
  }
  const convict = require('convict') as typeof convictType;
  const conf = convict(schema, { env: env as Record<string, string> });
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

// Loads virtcbt-scanner's configuration: schema defaults, then the file (--config), then VIRTCBT_SCANNER_* variables.
import { existsSync } from 'node:fs';
import convict from 'convict';
import { scannerSchema, type ScannerConfig } from '../../../config/scanner-schema.js';
import { UsageError } from '../../util/errors.js';

export type { ScannerConfig } from '../../../config/scanner-schema.js';
export const DEFAULT_SCANNER_CONFIG = '/etc/virtcbt-scanner/config.json';

export function loadScannerConfig(opts: { file?: string; env?: NodeJS.ProcessEnv } = {}): ScannerConfig {
  const env = opts.env ?? process.env;
  const file = opts.file ?? env.VIRTCBT_SCANNER_CONFIG ?? (existsSync(DEFAULT_SCANNER_CONFIG) ? DEFAULT_SCANNER_CONFIG : undefined);
  const conf = convict(scannerSchema, { env: env as Record<string, string> });
  if (file) {
    if (!existsSync(file)) throw new UsageError(`scanner config file ${file} does not exist`, { hint: 'Pass an existing file to --config' });
    try {
      conf.loadFile(file);
    } catch (cause) {
      throw new UsageError(`scanner config file ${file} is not valid JSON: ${(cause as Error).message}`, { cause, hint: 'Fix the file' });
    }
  }
  try {
    conf.validate({ allowed: 'strict' });
  } catch (cause) {
    throw new UsageError(`invalid scanner configuration${file ? ` in ${file}` : ''}: ${(cause as Error).message}`, { cause, hint: 'Fix the setting' });
  }
  const cfg = conf.getProperties();
  if (cfg.allowedClients.length === 0) {
    throw new UsageError(`no hypervisor may post scan jobs: allowedClients is empty${file ? ` in ${file}` : ''}`, {
      hint: 'List the hypervisors\' client certificate subjects, e.g. "CN=hv1" (virtcbt shows them with certificateSubject; certtool -i prints them reversed)',
    });
  }
  return cfg;
}

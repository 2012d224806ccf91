// Argument parsing shared by subcommands: node:util parseArgs with errors that are UsageErrors.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { UsageError } from '../util/errors.js';

type Options = NonNullable<ParseArgsConfig['options']>;

export function parse<O extends Options>(argv: string[], options: O, usage: string) {
  try {
    return parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (cause) {
    throw new UsageError(`${(cause as Error).message}\n\n${usage}`, { cause });
  }
}

export function positional(positionals: string[], index: number, name: string, usage: string): string {
  const v = positionals[index];
  if (!v) throw new UsageError(`missing ${name}\n\n${usage}`);
  return v;
}

/** Domain names go into API paths: reject what libvirt would never call a domain. */
export function domainArg(positionals: string[], usage: string): string {
  const d = positional(positionals, 0, 'DOMAIN', usage);
  if (d.includes('/') || d.length > 255) throw new UsageError(`'${d}' is not a valid domain name`);
  return d;
}

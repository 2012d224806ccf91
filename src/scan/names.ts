// Where a scan's state lives by name: the scanner's change-log consumer and the domain's scan-record
// directory. Import-free, so that the CLI's consumer listings can name a scanner's consumer without
// loading the scan job.
import { join } from 'node:path';

const CONSUMER_PREFIX = 'scan.';

/** The change-log consumer of a scanner: each has its own history. */
export function scanConsumerName(scanner: string): string {
  return `${CONSUMER_PREFIX}${scanner}`.slice(0, 64);
}

/** The scanner whose consumer `name` is (scanConsumerName), or undefined for any other consumer. */
export function scannerOfConsumer(name: string): string | undefined {
  return name.startsWith(CONSUMER_PREFIX) && name.length > CONSUMER_PREFIX.length ? name.slice(CONSUMER_PREFIX.length) : undefined;
}

/** The directory of a domain's scan records (one file per scanner). */
export function scanRecordDir(stateDir: string, domain: string): string {
  return join(stateDir, 'scan', encodeURIComponent(domain));
}

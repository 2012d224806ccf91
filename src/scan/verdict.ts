// A scan's verdict on a domain (what was found infected, by which scanner), checked field by field:
// it comes from a scanner, an API caller or a state file, never trusted as it stands.
import { UsageError } from '../util/errors.js';

export interface InfectedFile {
  /** Path inside the guest's filesystem, as the scanner found it. */
  path: string;
  /** The scanner's name for what it found, e.g. "Eicar-Test-Signature". */
  signature: string;
  disk?: string;
  size?: number;
  sha256?: string;
}

export interface Verdict {
  /** Which scanner (or external tool) reported it. */
  scanner?: string;
  /** The scan job's id, when a virtcbt scan found it. */
  scanId?: string;
  /** When the scanner finished (ISO 8601); the time it was received if the reporter gave none. */
  at: string;
  infected: InfectedFile[];
}

/** Caps that keep one verdict (and the state file that holds all of a domain's) a sane size. */
const MAX_FILES = 10_000;
const MAX_PATH = 4096;
const MAX_NAME = 256;

// Control characters would forge lines in logs and the human status output.
const CONTROL = /[\u0000-\u001f\u007f]/;

function name(v: unknown, what: string, max = MAX_NAME): string {
  if (typeof v !== 'string' || v === '' || v.length > max || CONTROL.test(v)) throw new UsageError(`${what} must be a non-empty string of at most ${max} characters without control characters`);
  return v;
}

/** Parses an untrusted verdict; throws a UsageError naming the first bad field. `now` fills a missing time. */
export function parseVerdict(v: unknown, now = new Date()): Verdict {
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new UsageError('verdict must be an object {infected: [{path, signature, ...}], scanner?, scanId?, at?}');
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!['scanner', 'scanId', 'at', 'infected', 'action'].includes(k)) throw new UsageError(`verdict: unknown key '${k}'`);
  if (!Array.isArray(o.infected) || o.infected.length === 0) throw new UsageError('verdict.infected must be a non-empty list of {path, signature}: a clean result is not a verdict to act on');
  if (o.infected.length > MAX_FILES) throw new UsageError(`verdict.infected lists ${o.infected.length} files; at most ${MAX_FILES}`);
  const infected = o.infected.map((f: unknown, i): InfectedFile => {
    const at = `verdict.infected[${i}]`;
    if (!f || typeof f !== 'object' || Array.isArray(f)) throw new UsageError(`${at} must be an object {path, signature, disk?, size?, sha256?}`);
    const r = f as Record<string, unknown>;
    for (const k of Object.keys(r)) if (!['path', 'signature', 'disk', 'size', 'sha256'].includes(k)) throw new UsageError(`${at}: unknown key '${k}'`);
    // Paths may hold any byte but NUL and are shown quoted (JSON) wherever a newline would matter.
    if (typeof r.path !== 'string' || r.path === '' || r.path.length > MAX_PATH || r.path.includes('\0')) throw new UsageError(`${at}.path must be a non-empty path of at most ${MAX_PATH} characters`);
    const out: InfectedFile = { path: r.path, signature: name(r.signature, `${at}.signature`) };
    if (r.disk !== undefined) out.disk = name(r.disk, `${at}.disk`, 32);
    if (r.size !== undefined) {
      if (!Number.isSafeInteger(r.size) || (r.size as number) < 0) throw new UsageError(`${at}.size must be a whole number of bytes`);
      out.size = r.size as number;
    }
    if (r.sha256 !== undefined) {
      if (typeof r.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(r.sha256)) throw new UsageError(`${at}.sha256 must be 64 lowercase hex digits`);
      out.sha256 = r.sha256;
    }
    return out;
  });
  const verdict: Verdict = { at: now.toISOString(), infected };
  if (o.at !== undefined) {
    if (typeof o.at !== 'string' || Number.isNaN(Date.parse(o.at))) throw new UsageError('verdict.at must be an ISO 8601 time');
    verdict.at = new Date(o.at).toISOString();
  }
  if (o.scanner !== undefined) verdict.scanner = name(o.scanner, 'verdict.scanner');
  if (o.scanId !== undefined) verdict.scanId = name(o.scanId, 'verdict.scanId');
  return verdict;
}

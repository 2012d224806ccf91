// The Node flags virtcbt-scanner runs with: the unit and wrapper `virtcbt install --scanner` writes,
// and the demo, bench and tests that start it.
//
// Node's TLS hands every decrypted record (16 KiB) to JavaScript in a buffer of its own (a TLS socket
// wrapped around an existing one, as NBD's STARTTLS needs, ignores `onread`), and V8 counts those
// bytes against the old generation's limit. With the scanner's small heap (~10 MB live) that
// limit stays small: a full mark-compact would run every ~7 MB read, ~40 per 300 MiB full scan, about
// a quarter of the scanner's CPU. A 128 MB initial old space leaves 2-3 per full scan.
export const SCANNER_NODE_FLAGS: readonly string[] = ['--initial-old-space-size=128'];

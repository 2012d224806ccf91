// The scanner host room: virtcbt-scanner's HTTPS API, scan jobs over NBD with TLS, and the clamd client.
export { ClamdClient, ClamdSession, chunkHeader, parseReply, type ClamdVerdict } from './clamd.js';
export { checkJob, runScanJob, type ScanJobOptions, type ScanLimits } from './scan-job.js';
export { peerSubject, startScannerServer, type ScannerServer, type ScannerServerOptions } from './server.js';
export { loadScannerConfig, DEFAULT_SCANNER_CONFIG, type ScannerConfig } from './config.js';
export { OwnerIndexStore } from './owner-indexes.js';
export { ClamdSpool, SpoolFile, type SpoolState } from './clamd-spool.js';
export { SCANNER_NODE_FLAGS } from './node-flags.js';

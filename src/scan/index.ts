// The scan room (patent US8789049): the hypervisor's scan job (a snapshot handed to a scanner host
// over NBD with TLS) and its client of the scanner's API.
export { runScan, type LastScan, type ScanContext, type ScanDeps, type ScanEvent, type ScanRequest, type ScanResult, type ScanVerdict } from './scan.js';
export { scanStatus, type ScanStatus } from './status.js';
export { scanConsumerName, scanRecordDir, scannerOfConsumer } from './names.js';
export { postScan, ScannerUnreachableError, type ScannerConfig } from './client.js';

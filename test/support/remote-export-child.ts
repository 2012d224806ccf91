// Child process of snapshot-tls-export tests: starts an export for another host (options as JSON in
// argv[2]), prints one JSON line {pid, port, uri} once it serves, then waits to be killed.
import { startRemoteExport, type RemoteExportOptions } from '../../src/snapshot/remote-export.js';

const opts = JSON.parse(process.argv[2]!) as RemoteExportOptions;
const exp = await startRemoteExport(opts);
process.stdout.write(JSON.stringify({ pid: exp.pid, port: exp.port, uri: exp.uri }) + '\n');
setInterval(() => undefined, 60_000);

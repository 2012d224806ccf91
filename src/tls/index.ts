// The TLS room: certificates (CA, server and client credentials) in the layout QEMU and libnbd read, and a qemu-storage-daemon serving a block node over NBD with mutual TLS.
export {
  CLIENT_FILES, SERVER_FILES, certificateSubject, createCa, issueClientCredentials, issueServerCredentials,
  type CertAuthority, type IssueOptions, type ServerIssueOptions,
} from './pki.js';
export {
  QSD, checkTlsServerOptions, startTlsNbdServer, uriHost,
  type TlsNbdServer, type TlsNbdServerEnd, type TlsNbdServerOptions, type TlsServerSettingNames,
} from './nbd-server.js';

// The TLS room: certificates (CA, server and client credentials) in the layout QEMU and libnbd read.
export {
  CLIENT_FILES, SERVER_FILES, certificateSubject, createCa, issueClientCredentials, issueServerCredentials,
  type CertAuthority, type IssueOptions, type ServerIssueOptions,
} from './pki.js';

// Public API of the guest room: the qemu-guest-agent client and its two transports (direct socket, libvirt).
export { GuestAgent, type ExecOptions, type ExecResult, type FrozenOptions } from './agent.js';
export type { AgentTransport, AgentCallOptions } from './transport.js';
export { SocketTransport, type SocketTransportOptions } from './socket-transport.js';
export { LibvirtTransport, virshAgentError, type LibvirtTransportOptions } from './libvirt-transport.js';
export { VirshShellTransport, type VirshShellTransportOptions } from './virsh-shell-transport.js';
export {
  AgentError,
  AgentCommandError,
  AgentUnavailableError,
  AgentProtocolError,
  GuestExecError,
  ThawFailedError,
} from './errors.js';
export { SYNC_DELIMITER, encodeSync, encodeAgentCommand, isSyncReply, parseAgentReply, newSyncId, type AgentReply } from './framing.js';
export type * from './types.js';

// Public API of the QMP room: the client, its errors, events, typed commands and transactions.
export { QmpClient, type QmpConnectOptions, type ExecuteOptions, type QmpExecutor } from './client.js';
export { QmpError, QmpCommandError, QmpProtocolError, QmpConnectionError } from './errors.js';
export { parseTarget, describeTarget, type QmpTarget, type SocketAddress } from './connection.js';
export {
  LineSplitter,
  JsonLineDecoder,
  parseJsonLine,
  classify,
  encodeCommand,
  MAX_LINE_BYTES,
  type QmpMessage,
  type QmpVersion,
  type QmpTimestamp,
} from './framing.js';
export type { QmpEvent, QmpEventMap, QmpEventName, QmpEventListener, WaitForOptions } from './events.js';
export * from './commands.js';
export { transaction, actions, type TransactionAction, type TransactionProperties } from './transaction.js';
export type * from './types.js';

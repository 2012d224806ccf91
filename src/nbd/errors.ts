// Errors of the NBD room: a server that answered a request with an error, and a server or link
// that broke the protocol (after which the connection is closed).
import { ProtocolError, type ErrorContext } from '../util/errors.js';
import { COMMAND_NAMES, describeErrno } from './protocol.js';

// All three end the CLI with the protocol exit code (ProtocolError's).

/** The server broke the protocol, the link dropped, or the handshake failed. The connection is closed. */
export class NbdProtocolError extends ProtocolError {}

/** The server refused or failed one request; the connection stays usable. */
export class NbdCommandError extends ProtocolError {
  readonly errno: number;
  readonly command: string;

  constructor(command: number, errno: number, serverMessage: string | undefined, where: string, ctx: ErrorContext = {}) {
    const name = COMMAND_NAMES[command] ?? `command ${command}`;
    super(
      `NBD ${name} ${where} failed: ${describeErrno(errno)}${serverMessage ? ` (server says: ${serverMessage})` : ''}`,
      ctx,
    );
    this.errno = errno;
    this.command = name;
  }
}

/** The server lacks what we need (a flag, a metadata context, TLS). */
export class NbdUnsupportedError extends ProtocolError {}

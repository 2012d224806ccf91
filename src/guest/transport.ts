// The one interface behind which the guest agent is reached: a direct socket to QEMU's channel, or libvirt.

export interface AgentCallOptions {
  /** Deadline for this call; the transport's default otherwise. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface AgentTransport {
  /** For messages: "guest agent socket /path" or "libvirt domain vm1". */
  readonly description: string;
  /** The libvirt domain (or test VM name) errors should name. */
  readonly domain: string | undefined;
  /**
   * Runs one agent command and returns its `return` value. Rejects with AgentCommandError when
   * the agent answers with an error, AgentUnavailableError when it cannot be reached, TimeoutError
   * at the deadline.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts?: AgentCallOptions): Promise<T>;
  close(): Promise<void>;
}

// A fake qemu-guest-agent on a unix socket, for faults the real agent cannot be made to show
// (garbage before the sync reply, replies that never come, a thaw that fails).
import net from 'node:net';

export interface AgentRequest {
  execute: string;
  arguments?: Record<string, unknown>;
  id?: unknown;
}

export interface FakeAgentContext {
  sock: net.Socket;
  /** Writes `{"return": value, "id": req.id}` and a newline. */
  reply(req: AgentRequest, value: unknown): void;
  error(req: AgentRequest, cls: string, desc: string): void;
}

/**
 * Answers one request (or sends nothing). Like qemu-ga, requests are handled strictly in order:
 * when the handler returns a promise, the next request waits for it.
 */
export type FakeAgentHandler = (req: AgentRequest, ctx: FakeAgentContext) => void | Promise<void>;

export interface FakeAgent {
  path: string;
  requests: AgentRequest[];
  connections: number;
  close(): Promise<void>;
}

/** The default sync answer, as qemu-ga gives it: 0xFF then {"return": id}. */
export function syncReply(req: AgentRequest): Buffer {
  return Buffer.concat([Buffer.from([0xff]), Buffer.from(JSON.stringify({ return: req.arguments?.id }) + '\n')]);
}

export async function fakeAgent(path: string, handle: FakeAgentHandler): Promise<FakeAgent> {
  const sockets = new Set<net.Socket>();
  const state: FakeAgent = {
    path,
    requests: [],
    connections: 0,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
  const server = net.createServer((sock) => {
    state.connections++;
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => {});
    const ctx: FakeAgentContext = {
      sock,
      reply: (req, value) => sock.write(JSON.stringify({ return: value, ...(req.id === undefined ? {} : { id: req.id }) }) + '\n'),
      error: (req, cls, desc) =>
        sock.write(JSON.stringify({ error: { class: cls, desc }, ...(req.id === undefined ? {} : { id: req.id }) }) + '\n'),
    };
    let buf = Buffer.alloc(0);
    let busy: Promise<void> = Promise.resolve();
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      let nl: number;
      while ((nl = buf.indexOf(0x0a)) >= 0) {
        let line = buf.subarray(0, nl);
        buf = buf.subarray(nl + 1);
        // Like qemu-ga, a 0xFF resets the parser: drop everything up to it.
        const ff = line.lastIndexOf(0xff);
        if (ff >= 0) line = line.subarray(ff + 1);
        if (line.toString().trim() === '') continue;
        const req = JSON.parse(line.toString()) as AgentRequest;
        busy = busy.then(() => {
          state.requests.push(req);
          return handle(req, ctx);
        });
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return state;
}

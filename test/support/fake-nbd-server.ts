// Test helper: a scriptable fake NBD server on a unix socket, for faults a real server cannot show.
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';

export interface FakeRequest {
  flags: number;
  type: number;
  cookie: number;
  offset: number;
  length: number;
}

export interface FakeScript {
  size?: number;
  /** Export flags sent with NBD_INFO_EXPORT (default HAS_FLAGS|SEND_FLUSH|CAN_MULTI_CONN… kept simple). */
  flags?: number;
  /** Replaces the whole handshake: write what you like. */
  handshake?(sock: Socket): void;
  /** After the handshake, stop reading from the client altogether (its writes back up). */
  handshakeThenStall?: boolean;
  /** Called for each transmission request (write payloads are consumed for you). */
  onRequest?(req: FakeRequest, sock: Socket): void;
}

export interface FakeServer {
  uri: string;
  /** Resolves when the client's connection to us has closed. */
  clientClosed(): Promise<void>;
  stop(): Promise<void>;
}

const IHAVEOPT = Buffer.from('IHAVEOPT');
const NBDMAGIC = Buffer.from('NBDMAGIC');
const REPLY_MAGIC = Buffer.from('0003e889045565a9', 'hex');

export function optionReply(option: number, type: number, data: Buffer = Buffer.alloc(0), lengthOverride?: number): Buffer {
  const h = Buffer.alloc(20);
  REPLY_MAGIC.copy(h, 0);
  h.writeUInt32BE(option, 8);
  h.writeUInt32BE(type >>> 0, 12);
  h.writeUInt32BE(lengthOverride ?? data.length, 16);
  return Buffer.concat([h, data]);
}

export async function startFakeServer(dir: string, script: FakeScript): Promise<FakeServer> {
  const path = join(dir, `fake-${Math.random().toString(36).slice(2, 8)}.sock`);
  const closed: Array<Promise<void>> = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((sock) => {
    sockets.add(sock);
    closed.push(new Promise((r) => sock.on('close', () => r())));
    sock.on('error', () => {});
    if (script.handshake) {
      script.handshake(sock);
      return;
    }
    serve(sock, script);
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return {
    uri: `nbd+unix:///?socket=${path}`,
    clientClosed: async () => {
      // The client connects at most a few times in these tests; wait for the latest.
      for (let i = 0; i < 200 && closed.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
      await closed[closed.length - 1];
    },
    stop: () => new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    }),
  };
}

/** A correct fixed-newstyle handshake (structured replies, base:allocation as context 1), then the script. */
function serve(sock: Socket, script: FakeScript): void {
  let buf = Buffer.alloc(0);
  let phase: 'flags' | 'options' | 'transmission' = 'flags';
  let writeLeft = 0;
  const greeting = Buffer.alloc(18);
  NBDMAGIC.copy(greeting, 0);
  IHAVEOPT.copy(greeting, 8);
  greeting.writeUInt16BE(3, 16);
  sock.write(greeting);
  sock.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      if (phase === 'flags') {
        if (buf.length < 4) return;
        buf = buf.subarray(4);
        phase = 'options';
      } else if (phase === 'options') {
        if (buf.length < 16) return;
        const opt = buf.readUInt32BE(8);
        const len = buf.readUInt32BE(12);
        if (buf.length < 16 + len) return;
        buf = buf.subarray(16 + len);
        if (opt === 8) sock.write(optionReply(8, 1));
        else if (opt === 10) {
          const ctx = Buffer.from('base:allocation');
          const d2 = Buffer.alloc(4 + ctx.length);
          d2.writeUInt32BE(1, 0);
          ctx.copy(d2, 4);
          sock.write(optionReply(10, 4, d2));
          sock.write(optionReply(10, 1));
        } else if (opt === 7) {
          const info = Buffer.alloc(12);
          info.writeUInt16BE(0, 0);
          info.writeUInt32BE(0, 2);
          info.writeUInt32BE(script.size ?? 1 << 20, 6);
          info.writeUInt16BE(script.flags ?? 0x1 | 0x4, 10);
          sock.write(optionReply(7, 3, info));
          sock.write(optionReply(7, 1));
          phase = 'transmission';
          if (script.handshakeThenStall) {
            sock.pause();
            sock.removeAllListeners('data');
            return;
          }
        } else sock.write(optionReply(opt, 0x80000001));
      } else {
        if (writeLeft) {
          const n = Math.min(writeLeft, buf.length);
          buf = buf.subarray(n);
          writeLeft -= n;
          if (writeLeft) return;
        }
        if (buf.length < 28) return;
        const req: FakeRequest = {
          flags: buf.readUInt16BE(4),
          type: buf.readUInt16BE(6),
          cookie: Number(buf.readBigUInt64BE(8)),
          offset: Number(buf.readBigUInt64BE(16)),
          length: buf.readUInt32BE(24),
        };
        buf = buf.subarray(28);
        if (req.type === 1) writeLeft = req.length;
        if (req.type === 2) {
          sock.end();
          return;
        }
        script.onRequest?.(req, sock);
      }
    }
  });
}

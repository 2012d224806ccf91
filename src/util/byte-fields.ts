// Little-endian fields in and out of one buffer, for the small binary files virtcbt saves (the
// scanner's owner indexes). The reader checks every field against what is left: a short or
// inflated buffer throws with `what` named, and a count is never trusted past the bytes that hold it.

export class ByteWriter {
  private readonly parts: Buffer[] = [];
  private cur = Buffer.alloc(64 * 1024);
  private at = 0;

  private room(n: number): void {
    if (this.at + n <= this.cur.length) return;
    this.parts.push(this.cur.subarray(0, this.at));
    this.cur = Buffer.alloc(Math.max(64 * 1024, n));
    this.at = 0;
  }

  u32(v: number): void { this.room(4); this.cur.writeUInt32LE(v, this.at); this.at += 4; }
  i32(v: number): void { this.room(4); this.cur.writeInt32LE(v, this.at); this.at += 4; }
  f64(v: number): void { this.room(8); this.cur.writeDoubleLE(v, this.at); this.at += 8; }
  raw(b: Uint8Array): void { this.room(b.length); this.cur.set(b, this.at); this.at += b.length; }
  /** Bytes with their length before them (ByteReader.bytes). */
  bytes(b: Uint8Array): void { this.u32(b.length); this.raw(b); }
  str(s: string): void { this.bytes(Buffer.from(s, 'utf8')); }
  done(): Buffer { return Buffer.concat([...this.parts, this.cur.subarray(0, this.at)]); }
}

export class ByteReader {
  private at = 0;

  /** `what` names the buffer in errors ("the saved owner index"). */
  constructor(private readonly b: Buffer, private readonly what: string) {}

  private need(n: number): void {
    if (this.at + n > this.b.length) throw new Error(`${this.what} is cut short`);
  }

  u32(): number { this.need(4); const v = this.b.readUInt32LE(this.at); this.at += 4; return v; }
  i32(): number { this.need(4); const v = this.b.readInt32LE(this.at); this.at += 4; return v; }
  f64(): number { this.need(8); const v = this.b.readDoubleLE(this.at); this.at += 8; return v; }
  /** An f64 that must be a whole number, 0 or more (an offset, a count). */
  nonNegative(): number {
    const v = this.f64();
    if (!Number.isSafeInteger(v) || v < 0) throw new Error(`${this.what} holds an offset out of range`);
    return v;
  }
  raw(n: number): Buffer { this.need(n); const v = this.b.subarray(this.at, this.at + n); this.at += n; return v; }
  bytes(): Buffer { return this.raw(this.u32()); }
  str(): string { return this.bytes().toString('utf8'); }
  /** A count of items of at least `minBytes` each, checked against what is left. */
  count(minBytes: number): number {
    const n = this.u32();
    if (n * minBytes > this.b.length - this.at) throw new Error(`${this.what} counts more than it holds`);
    return n;
  }
  /** Throws unless every byte was read. */
  end(): void {
    if (this.at !== this.b.length) throw new Error(`trailing bytes after ${this.what}`);
  }
}

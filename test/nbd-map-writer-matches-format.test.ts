// MapWriter's byte-level printing (what `virtcbt nbd map` uses) equals formatMapLine/formatMapJson
// for numbers of every width, extents given one by one or as whole replies, merged alike.
import { describe, expect, it } from 'vitest';
import { MapWriter, coalesce, formatMapJson, formatMapLine, type StatusExtent } from '../src/nbd/index.js';

/** Extents from `start` with lengths of 1 to 12 digits (offsets up to 16 digits), types 0..3 and a few large ones. */
function extents(seed: number, count: number, start: number): StatusExtent[] {
  let s = seed;
  const rand = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0);
  const out: StatusExtent[] = [];
  let offset = start;
  for (let i = 0; i < count; i++) {
    const digits = 1 + (rand() % 12);
    const length = Math.max(1, Math.floor((rand() / 2 ** 32) * 10 ** digits));
    const r = rand() % 10;
    const flags = r < 7 ? r % 2 : r === 7 ? 3 : r === 8 ? 1000 : 4294967295;
    out.push({ offset, length, flags });
    offset += length;
  }
  return out;
}

async function* once<T>(xs: T[]): AsyncGenerator<T> {
  yield* xs;
}

async function expected(context: string, json: boolean, es: StatusExtent[]): Promise<string> {
  const lines: string[] = [];
  for await (const e of coalesce(once(es))) lines.push(json ? formatMapJson(context, e) : formatMapLine(context, e));
  return json ? (lines.length ? `[\n${lines.join(',\n')}\n]\n` : ']\n') : lines.map((l) => l + '\n').join('');
}

function written(context: string, json: boolean, es: StatusExtent[], asRuns: boolean): string {
  const blocks: Buffer[] = [];
  const w = new MapWriter(context, json, (b) => blocks.push(Buffer.from(b)));
  if (asRuns) {
    for (let i = 0; i < es.length; i += 7) {
      const part = es.slice(i, i + 7);
      w.run(part[0]!.offset, part.flatMap((e) => [e.length, e.flags]));
    }
  } else for (const e of es) w.extent(e.offset, e.length, e.flags);
  w.end();
  return Buffer.concat(blocks).toString('latin1');
}

describe('MapWriter', () => {
  for (const context of ['base:allocation', 'qemu:dirty-bitmap:b0', 'qemu:allocation-depth', 'other:context']) {
    for (const json of [false, true]) {
      it(`${context}${json ? ' --json' : ''}: the same text as the line formatters`, async () => {
        for (const [seed, start] of [[1, 0], [7, 99_999_999], [42, 2 ** 40]] as const) {
          const es = extents(seed, 3000, start);
          const want = await expected(context, json, es);
          expect(written(context, json, es, false)).toBe(want);
          expect(written(context, json, es, true)).toBe(want);
        }
      });
    }
  }
});

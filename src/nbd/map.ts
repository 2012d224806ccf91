// `nbdinfo --map` presentation of block status: the description of each extent type per context, and its line format.
import { CONTEXT_ALLOCATION_DEPTH, CONTEXT_BASE_ALLOCATION, CONTEXT_DIRTY_BITMAP_PREFIX } from './protocol.js';
import type { StatusExtent } from './extents.js';

/** What a type number means in `context`, as nbdinfo words it; undefined when unknown (then omitted). */
export function describeExtentType(context: string, type: number): string | undefined {
  if (context === CONTEXT_BASE_ALLOCATION) {
    return ['data', 'hole', 'zero', 'hole,zero'][type];
  }
  if (context.startsWith(CONTEXT_DIRTY_BITMAP_PREFIX)) {
    return ['clean', 'dirty'][type];
  }
  if (context === CONTEXT_ALLOCATION_DEPTH) {
    return type === 0 ? 'absent' : type === 1 ? 'local' : `backing depth ${type}`;
  }
  return undefined;
}

/** One line in nbdinfo --map's columns: offset (10 wide), length (10), type (3), description. */
export function formatMapLine(context: string, e: StatusExtent): string {
  const d = describeExtentType(context, e.flags);
  return `${String(e.offset).padStart(10)}  ${String(e.length).padStart(10)}  ${String(e.flags).padStart(3)}${d === undefined ? '' : `  ${d}`}`;
}

/** One element of nbdinfo --map --json's array. */
export function formatMapJson(context: string, e: StatusExtent): string {
  const d = describeExtentType(context, e.flags);
  return `{ "offset": ${e.offset}, "length": ${e.length}, "type": ${e.flags}${d === undefined ? '' : `, "description": ${JSON.stringify(d)}`}}`;
}

// The extent room: the { offset, length } shape and merge, intersect, subtract, align on lists of it.
export { align, coarsen, firstEndingAfter, hitTest, fromPairs, intersect, merge, split, subtract, toPairs, totalBytes, type Extent, type ExtentPair } from './extents.js';

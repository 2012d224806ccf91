// What tells a file's content apart without reading it: any write changes its ctime (and replacing
// it by rename changes its inode). Used to reuse what was parsed or validated from an unchanged file.
import type { BigIntStats } from 'node:fs';

export function fileStamp(st: BigIntStats): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

// Child process of changelog-survives-kill: folds disjoint bitmaps into the change log in a loop until it is killed,
// printing "folded N" after each fold commits. Args: DB_PATH START_INDEX.
import { ChangeLog } from '../../src/changelog/index.js';
import { bitmapName, CONSUMER, DOMAIN, foldExtents, PASS_EVERY, STRIDE, TARGET } from './changelog-kill-plan.js';

const [path, startArg] = process.argv.slice(2);
const log = ChangeLog.open(path);
// A predecessor killed between beginPass and commitPass left its pass open: give it up, as a caller would.
for (const p of log.openPasses(DOMAIN)) log.abortPass(p.id);
process.stdout.write('ready\n');
for (let i = Number(startArg); i < STRIDE; i++) {
  const name = bitmapName(i);
  // A predecessor killed between recording and folding left the record: fold it now.
  if (!log.listBitmaps(DOMAIN, TARGET).some((b) => b.name === name)) {
    log.recordBitmap(DOMAIN, TARGET, name, log.currentGeneration(DOMAIN), 'frozen');
  }
  log.fold(DOMAIN, TARGET, name, foldExtents(i));
  process.stdout.write(`folded ${i}\n`);
  if (i % PASS_EVERY === PASS_EVERY - 1) {
    const p = log.beginPass(DOMAIN, CONSUMER);
    log.commitPass(p.id);
  }
}
process.stdout.write('done\n');
log.close();

// Random mutations of a repository (as in repo-random-mutations-stay-inside), then the next backup
// of a real domain into it: it changes nothing outside the repository (a sandbox beside it is
// compared byte for byte), never crashes, and either works or names the point it cannot use.
import { beforeAll, describe, it } from 'vitest';
import { useCleanup } from './support/cleanup.js';
import { startTestDaemon, type TestDaemon } from './support/daemon.js';
import { startLibvirtGuest, type LibvirtGuest } from './support/libvirt.js';
import { expectUntouched, handmadeRepo, snapshotTree } from './support/handmade-repo.js';
import { rng } from './support/random.js';
import { expectSaneOutcome, mutate, mutationSeed as seed, roundCopy } from './support/repo-mutations.js';

useCleanup();
const BACKUP_ROUNDS = 8;

describe('the next backup into a mutated repository', () => {
  let daemon: TestDaemon;
  let guest: LibvirtGuest;

  beforeAll(async () => {
    daemon = await startTestDaemon();
    guest = await startLibvirtGuest({ name: 'mutrepo', scratchFormat: 'qcow2', start: false });
    await daemon.cli(['enable', guest.name]);
    await daemon.cli(['consumer', 'add', guest.name, 'nightly']);
  });

  it(`${BACKUP_ROUNDS} rounds: a backup into a mutated chain changes nothing outside the repository`, async () => {
    const random = rng(seed + 1);
    const pristine = await handmadeRepo({ sandbox: true, domain: guest.name });
    for (let round = 0; round < BACKUP_ROUNDS; round++) {
      const r = await roundCopy(pristine);
      const what = `seed ${seed + 1}, backup round ${round}: ${JSON.stringify(await mutate(r, random, `seed ${seed + 1}, backup round ${round}`))}`;
      const before = snapshotTree(r.sandbox);
      const run = await daemon.cli(['backup', guest.name, '--consumer', 'nightly', '--repo', r.root], { reject: false });
      expectSaneOutcome({ ...run, command: 'backup' }, what);
      expectUntouched(r.sandbox, before, what);
    }
  }, 900_000);
});

// Teardown registry for tests: every resource a helper creates registers its release here before
// anything is awaited, so a failing test still leaves no QEMU, domain or temp directory behind.
import { afterAll, afterEach, beforeEach } from 'vitest';

type Cleanup = () => unknown | Promise<unknown>;

/** Resources registered outside a test body (beforeAll, module level): released in afterAll. */
const fileScope: Cleanup[] = [];
/** Resources registered inside a test (between beforeEach and afterEach, when useCleanup() is on). */
let testScope: Cleanup[] | undefined;

/**
 * Registers `fn` to run at teardown (last registered runs first). Returns a function that
 * unregisters it, for resources a test released itself.
 */
export function onCleanup(fn: Cleanup): () => void {
  const list = testScope ?? fileScope;
  list.push(fn);
  return () => {
    const i = list.lastIndexOf(fn);
    if (i >= 0) list.splice(i, 1);
  };
}

async function drain(list: Cleanup[]): Promise<void> {
  const errors: unknown[] = [];
  while (list.length > 0) {
    const fn = list.pop()!;
    try {
      await fn();
    } catch (err) {
      errors.push(err);
    }
  }
  if (errors.length === 1) throw errors[0];
  if (errors.length > 1) throw new AggregateError(errors, `${errors.length} cleanups failed`);
}

/** Runs every registered cleanup (the current test's first, then the file's). All run even if some throw. */
export async function runCleanups(): Promise<void> {
  const errors: unknown[] = [];
  for (const list of [testScope ?? [], fileScope]) {
    try {
      await drain(list);
    } catch (err) {
      errors.push(err);
    }
  }
  if (errors.length === 1) throw errors[0];
  if (errors.length > 1) throw new AggregateError(errors, 'cleanups failed');
}

/**
 * Call once at the top of a test file: resources a test starts are released after that test,
 * resources started in beforeAll (or at module level) after the whole file.
 */
export function useCleanup(): void {
  beforeEach(() => {
    testScope = [];
  });
  afterEach(async () => {
    const list = testScope ?? [];
    testScope = undefined;
    await drain(list);
  });
  afterAll(async () => {
    await runCleanups();
  });
}

// Last line of defence: child processes (QEMU, storage daemons) die with this process even when
// a worker is torn down without running hooks. 'exit' handlers must be synchronous.
const children = new Set<number>();

/** Tracks a child pid so it is SIGKILLed if this process exits first. Returns an untrack function. */
export function trackChild(pid: number): () => void {
  children.add(pid);
  installExitHandlers();
  return () => children.delete(pid);
}

const exitHooks = new Set<() => void>();

/**
 * Registers a synchronous last-resort action for process exit (e.g. `virsh destroy` with
 * execFileSync). Returns an unregister function; call it once the resource is released normally.
 */
export function onExitSync(fn: () => void): () => void {
  exitHooks.add(fn);
  installExitHandlers();
  return () => exitHooks.delete(fn);
}

function runExitActions(): void {
  for (const fn of exitHooks) {
    try {
      fn();
    } catch {
      // best effort: the next run's sweep removes what is left
    }
  }
  exitHooks.clear();
  for (const pid of children) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  children.clear();
}

let installed = false;
function installExitHandlers(): void {
  if (installed) return;
  installed = true;
  process.on('exit', runExitActions);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    // Only take over a signal nobody else handles, then die of it as we would have anyway.
    if (process.listenerCount(sig) > 0) continue;
    process.once(sig, () => {
      runExitActions();
      process.kill(process.pid, sig);
    });
  }
}

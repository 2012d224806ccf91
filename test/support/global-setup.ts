// vitest global set-up: builds (or finds in .cache/) the test guest once before all test files,
// so that the first test file does not pay for the build inside its own timeout.
import type { TestProject } from 'vitest/node';
import { buildGuestImages } from '../../src/guestimage/index.js';
import { sweepStaleRigDirs } from './sweep.js';

export default async function setup(project: TestProject): Promise<void> {
  const started = Date.now();
  // Leftovers of runs that were killed outright (their exit handlers never ran).
  await sweepStaleRigDirs();
  const images = await buildGuestImages();
  // Typed by the ProvidedContext declaration in images.ts.
  project.provide('virtcbtGuestImages', images);
  if (process.env.VIRTCBT_TEST_VERBOSE) {
    console.error(`test guest ${images.key} ready in ${Date.now() - started} ms (${images.dir})`);
  }
}

// The cached test guest, as built by global-setup.ts (or built here when a helper runs without it).
import { inject } from 'vitest';
import { buildGuestImages, type GuestImages } from '../../src/guestimage/index.js';

declare module 'vitest' {
  export interface ProvidedContext {
    virtcbtGuestImages: GuestImages;
  }
}

let cached: Promise<GuestImages> | undefined;

export function guestImages(): Promise<GuestImages> {
  cached ??= (async () => {
    try {
      const provided = inject('virtcbtGuestImages');
      if (provided) return provided;
    } catch {
      // not inside a vitest worker with global set-up: build (or reuse) the cache directly
    }
    return buildGuestImages();
  })();
  return cached;
}

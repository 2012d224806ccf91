// Imported first by virtcbtd's entry point: libvirt's default of 4 threads for file I/O lets a
// backup's fsyncs (the in-progress marker, early images, overlays) queue the small writes behind
// them, e.g. the freeze marker the guest's freeze waits for. libuv reads the size when the pool is
// first used, which no module does while loading.
process.env.UV_THREADPOOL_SIZE ??= '16';
export {};

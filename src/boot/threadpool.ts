// Imported first by the entry point, before anything can touch the libuv pool: async C_Sign calls run on
// that pool, and Node's default of 4 threads would cap concurrent token operations at 4.
process.env.UV_THREADPOOL_SIZE ??= '16';
export {};

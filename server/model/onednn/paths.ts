/** Where `deno task build-native` (build.ts) puts the oneDNN shim and where lib.ts opens it. */
export const SHIM_LIBRARY = new URL("./build/libplshim.so", import.meta.url).pathname;

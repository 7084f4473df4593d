/**
 * Paging, the one way every list of the service pages (ListTasks, ListJobs). A page token names
 * the last item of the previous page (opaque to callers: base64 of `after:<key>`), so paging
 * stays correct while items are added or removed between calls: nothing is skipped or repeated.
 * Lists held in memory page with `pageAfter`; lists sorted by key (the registry's, in memory, on
 * disk or in a database) read `parsePageRequest` and page with `pageOfSorted` or a query.
 */
import { invalidArgument } from "../errors.ts";

export interface PageRequest {
  /** Items per page; default and bound come from the list (see `PageLimits`). */
  pageSize?: number;
  /** `nextPageToken` of the previous page; "" or absent for the first. */
  pageToken?: string;
}

export interface Page<T> {
  items: T[];
  /** "" on the last page. */
  nextPageToken: string;
}

export interface PageLimits {
  defaultSize: number;
  maxSize: number;
}

/** The bounds of every list of the service. */
export const LIST_PAGE: PageLimits = { defaultSize: 50, maxSize: 1000 };

/** Checks `page_size` (0 or absent: the default) against the limits. */
export function pageSizeOf(req: PageRequest, limits: PageLimits): number {
  const size = req.pageSize || limits.defaultSize;
  if (!Number.isSafeInteger(size) || size < 1 || size > limits.maxSize) {
    throw invalidArgument(
      `page_size must be an integer in [1, ${limits.maxSize}] (0 for ${limits.defaultSize}): found ${req.pageSize}`,
    );
  }
  return size;
}

export function encodePageToken(lastKey: string): string {
  return btoa(`after:${lastKey}`);
}

/** The key a token names, or undefined when it is not one of ours. */
function decodePageToken(token: string): string | undefined {
  try {
    const decoded = atob(token);
    return decoded.startsWith("after:") ? decoded.slice(6) : undefined;
  } catch {
    return undefined; // not base64: not one of ours
  }
}

function badToken(token: string, why = ""): never {
  throw invalidArgument(
    `page_token is not a token this list issued${why}: found ${
      JSON.stringify(token.length > 80 ? `${token.slice(0, 80)}...` : token)
    }`,
  );
}

/**
 * The page size and the key to start after ("" for the first page) of a list sorted by key;
 * `isKey` says which keys the list can hold (a token naming anything else is not ours).
 */
export function parsePageRequest(
  req: PageRequest,
  limits: PageLimits,
  isKey: (key: string) => boolean,
): { pageSize: number; after: string } {
  const pageSize = pageSizeOf(req, limits);
  const token = req.pageToken ?? "";
  if (token === "") return { pageSize, after: "" };
  const after = decodePageToken(token);
  if (after === undefined || !isKey(after)) badToken(token);
  return { pageSize, after };
}

/** The page of `sortedKeys` after `after`, and the token for the next one. */
export function pageOfSorted(
  sortedKeys: string[],
  pageSize: number,
  after: string,
): { keys: string[]; nextPageToken: string } {
  let start = 0;
  if (after !== "") {
    // Binary search: the first key > after.
    let lo = 0, hi = sortedKeys.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (sortedKeys[mid] <= after) lo = mid + 1;
      else hi = mid;
    }
    start = lo;
  }
  const keys = sortedKeys.slice(start, start + pageSize);
  const more = start + pageSize < sortedKeys.length;
  return { keys, nextPageToken: more ? encodePageToken(keys[keys.length - 1]) : "" };
}

/** Code-unit order, the same everywhere (localeCompare would depend on the host's locale). */
export function compareKeys(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The page of `items` (in their order) after the one the token names. */
export function pageAfter<T>(
  items: readonly T[],
  keyOf: (item: T) => string,
  req: PageRequest,
  limits: PageLimits,
): Page<T> {
  const size = pageSizeOf(req, limits);
  let start = 0;
  const token = req.pageToken ?? "";
  if (token !== "") {
    const after = decodePageToken(token);
    const at = after === undefined ? -1 : items.findIndex((x) => keyOf(x) === after);
    if (at < 0) badToken(token, " (or its item is gone)");
    start = at + 1;
  }
  const page = items.slice(start, start + size);
  const more = start + size < items.length;
  return {
    items: page,
    nextPageToken: more ? encodePageToken(keyOf(page[page.length - 1])) : "",
  };
}

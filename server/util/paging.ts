/**
 * Paging of in-memory lists. A page token names the last item of the previous page (opaque to
 * callers), so paging stays correct while items are added or removed between calls.
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
    let after: string | undefined;
    try {
      const decoded = atob(token);
      if (decoded.startsWith("after:")) after = decoded.slice(6);
    } catch {
      // Not base64: not one of ours, refused below.
    }
    const at = after === undefined ? -1 : items.findIndex((x) => keyOf(x) === after);
    if (at < 0) {
      throw invalidArgument(
        `page_token is not a token this list issued (or its item is gone): found ${
          JSON.stringify(token.length > 80 ? `${token.slice(0, 80)}...` : token)
        }`,
      );
    }
    start = at + 1;
  }
  const page = items.slice(start, start + size);
  const more = start + size < items.length;
  return {
    items: page,
    nextPageToken: more ? btoa(`after:${keyOf(page[page.length - 1])}`) : "",
  };
}

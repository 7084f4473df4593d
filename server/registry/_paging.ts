/**
 * Page tokens are the last name of the previous page (opaque to callers), so paging stays correct
 * while tasks are added or deleted between calls: nothing is skipped or repeated.
 */
import { invalidArgument } from "../errors.ts";
import { type PageLimits, pageSizeOf } from "../util/paging.ts";
import { isTaskName } from "./names.ts";
import type { ListOptions } from "./types.ts";

/** The same bounds as every list of the service (ListTasks, ListJobs). */
export const TASK_PAGE: PageLimits = { defaultSize: 50, maxSize: 1000 };

export function encodePageToken(lastName: string): string {
  return btoa(`after:${lastName}`);
}

/** Checks the options and returns the page size and the name to start after ("" for the start). */
export function parseListOptions(options: ListOptions = {}): { pageSize: number; after: string } {
  const pageSize = pageSizeOf(options, TASK_PAGE);
  const token = options.pageToken ?? "";
  if (token === "") return { pageSize, after: "" };
  let decoded = "";
  try {
    decoded = atob(token);
  } catch {
    // Falls through to the error below: a token that is not base64 is not one of ours.
  }
  const after = decoded.startsWith("after:") ? decoded.slice(6) : "";
  if (!isTaskName(after)) {
    throw invalidArgument(
      `page_token is not a token this list issued: found ${
        JSON.stringify(token.length > 80 ? `${token.slice(0, 80)}...` : token)
      }`,
    );
  }
  return { pageSize, after };
}

/** The page of `sortedNames` after `after`, and the token for the next one. */
export function pageOf(
  sortedNames: string[],
  pageSize: number,
  after: string,
): { names: string[]; nextPageToken: string } {
  let start = 0;
  if (after !== "") {
    // Binary search: the first name > after.
    let lo = 0, hi = sortedNames.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (sortedNames[mid] <= after) lo = mid + 1;
      else hi = mid;
    }
    start = lo;
  }
  const names = sortedNames.slice(start, start + pageSize);
  const more = start + pageSize < sortedNames.length;
  return { names, nextPageToken: more ? encodePageToken(names[names.length - 1]) : "" };
}

/** Code-unit order, the same everywhere (localeCompare would depend on the host's locale). */
export function compareNames(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

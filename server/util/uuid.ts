/** UUIDs (8-4-4-4-12 hex digits): the form of job ids and request ids. */
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Whether `s` is a UUID, in either case. */
export function isUuid(s: string): boolean {
  return UUID.test(s);
}

// DEMO ONLY: who the request is for. This example takes the user id from the request (the
// `x-demo-user` header, the `demo_user` cookie or the `?user=` query parameter) so that it runs
// without a login. A real app takes it from its authenticated session (e.g. the Supabase user id
// of the verified session) and never from anything the browser can set: with the service token,
// whatever user id is passed is whose cache is read and written.
import "server-only";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export const DEMO_USER_HELP =
  "name the demo user: ?user=<uuid>, the x-demo-user header or the demo_user cookie (a real app takes it from its session)";

/** The first candidate that is a user uuid, or null. */
export function demoUserId(...candidates: (string | null | undefined)[]): string | null {
  for (const candidate of candidates) {
    if (candidate && UUID.test(candidate)) return candidate.toLowerCase();
  }
  return null;
}

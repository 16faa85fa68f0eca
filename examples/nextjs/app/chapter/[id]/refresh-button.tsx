"use client";
// The one client component: it asks the server to render the page again. It imports nothing
// from lib/ (lib/cache.ts is server-only: importing it here would fail the build).
import { useRouter } from "next/navigation";
import { useTransition } from "react";

export function RefreshButton() {
  const router = useRouter();
  const [pending, startTransition] = useTransition();
  return (
    <button type="button" disabled={pending} onClick={() => startTransition(() => router.refresh())}>
      {pending ? "Loading…" : "Render again (served from the cache)"}
    </button>
  );
}

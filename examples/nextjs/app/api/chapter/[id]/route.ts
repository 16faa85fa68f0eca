// GET /api/chapter/{id}: the user's chapter as JSON, generated at most once across concurrent
// requests (and server processes) through cachesvc's lease.
import { isCacheError } from "@cachesvc/client";
import type { NextRequest } from "next/server";

import { getChapter, isChapterId } from "@/lib/chapter";
import { DEMO_USER_HELP, demoUserId } from "@/lib/demo-user";

export const dynamic = "force-dynamic"; // per-user data: never cached or prerendered by Next.js

export async function GET(request: NextRequest, { params }: { params: Promise<{ id: string }> }) {
  const { id } = await params;
  const userId = demoUserId(
    request.headers.get("x-demo-user"),
    request.cookies.get("demo_user")?.value,
    request.nextUrl.searchParams.get("user"),
  );
  if (!userId) return Response.json({ error: DEMO_USER_HELP }, { status: 400 });
  if (!isChapterId(id)) return Response.json({ error: "the chapter id is 1-64 of [A-Za-z0-9_-]" }, { status: 400 });
  try {
    const chapter = await getChapter(userId, id);
    return Response.json(
      {
        key: chapter.entry.key,
        text: chapter.content.text,
        generation: chapter.content.generation,
        generatedHere: chapter.generatedHere,
        generations: chapter.generations,
        createdAt: chapter.entry.createdAt,
        tokenCount: chapter.entry.tokenCount,
        model: chapter.entry.model,
      },
      { headers: { "Cache-Control": "private, no-store" } },
    );
  } catch (err) {
    if (!isCacheError(err)) throw err;
    // The cache is down or refused: say so without leaking anything of the request's credentials.
    const status = err.status === 400 ? 400 : err.status === 429 ? 429 : 502;
    return Response.json({ error: err.code, message: err.message, requestId: err.requestId }, { status });
  }
}

// GET /api/generations: how many times this server process ran the (fake) model.
import { generationCount } from "@/lib/fake-llm";

export const dynamic = "force-dynamic";

export function GET() {
  return Response.json({ generations: generationCount() }, { headers: { "Cache-Control": "no-store" } });
}

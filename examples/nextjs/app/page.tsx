// The index: no user data here, so it may be rendered at build time.
export default function Home() {
  return (
    <main>
      <h1>cachesvc + Next.js</h1>
      <p>
        Open <code>/chapter/1?user=&lt;uuid&gt;</code> (a page) or <code>/api/chapter/1?user=&lt;uuid&gt;</code> (JSON).
        The first request generates the chapter with a fake model (~200 ms) and stores it in cachesvc; the next ones
        read it from the cache. <code>/api/generations</code> counts this server&apos;s generations.
      </p>
    </main>
  );
}

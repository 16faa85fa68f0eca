import type { Metadata } from "next";
import type { ReactNode } from "react";

export const metadata: Metadata = {
  title: "cachesvc + Next.js example",
  description: "Per-user AI content read through cachesvc and generated once",
};

export default function RootLayout({ children }: { children: ReactNode }) {
  return (
    <html lang="en">
      <body style={{ fontFamily: "system-ui, sans-serif", maxWidth: "42rem", margin: "2rem auto", lineHeight: 1.5 }}>
        {children}
      </body>
    </html>
  );
}

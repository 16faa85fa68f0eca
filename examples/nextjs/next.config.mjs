// @ts-check
import { fileURLToPath } from "node:url";

// @cachesvc/client is a `file:` dependency: node_modules/@cachesvc/client is a symlink to
// clients/typescript of this repository, outside this app's directory. The bundler and the
// output file tracing must both be allowed to look that far up.
const repositoryRoot = fileURLToPath(new URL("../..", import.meta.url));

/** @type {import("next").NextConfig} */
const nextConfig = {
  poweredByHeader: false,
  turbopack: { root: repositoryRoot },
  outputFileTracingRoot: repositoryRoot,
};

export default nextConfig;

// Bundles client.ts, serves it from its own local origin, opens it in headless Chromium against
// the gRPC server given as the first argument, and prints the page's results as JSON.
//   node run.mjs http://127.0.0.1:PORT
import { execFileSync } from "node:child_process";
import { createServer } from "node:http";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const [server] = process.argv.slice(2);
if (!server) throw new Error("usage: node run.mjs <server url>");

execFileSync(join(here, "node_modules/.bin/buf"), ["generate", "../../proto", "--template", "buf.gen.yaml"], {
  cwd: here,
  stdio: "inherit",
  env: { ...process.env, PATH: `${join(here, "node_modules/.bin")}:${process.env.PATH}` },
});
const bundle = await esbuild.build({
  entryPoints: [join(here, "client.ts")],
  bundle: true,
  format: "esm",
  target: "es2022",
  write: false,
});
const js = bundle.outputFiles[0].contents;
const html = `<!doctype html><meta charset="utf-8"><title>reviews</title><script type="module" src="/app.js"></script>`;

const page = createServer((req, res) => {
  if (req.url.startsWith("/app.js")) {
    res.writeHead(200, { "content-type": "text/javascript" }).end(js);
  } else {
    res.writeHead(200, { "content-type": "text/html" }).end(html);
  }
});
await new Promise((ok) => page.listen(0, "127.0.0.1", ok));
const origin = `http://127.0.0.1:${page.address().port}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ], // playwright gives every launch a new, empty profile
});
try {
  const tab = await browser.newPage();
  const errors = [];
  tab.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  await tab.goto(`${origin}/?server=${encodeURIComponent(server)}`);
  await tab.waitForFunction(() => window.__results !== undefined, null, { timeout: 30000 });
  const results = await tab.evaluate(() => window.__results);
  process.stdout.write(JSON.stringify({ ...results, consoleErrors: errors }) + "\n");
} finally {
  await browser.close();
  page.close();
}

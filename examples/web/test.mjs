// End to end in headless Chromium: serves this folder, opens the page with
// ?image=fixture.png, and checks that the top class it shows is EXPECTED (the native
// `densenet run`'s top-1 for the same file). With --screenshot FILE, also saves the page.
//
//   node examples/web/test.mjs EXPECTED [--screenshot docs/web.png]
import { execFile } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { serve } from "./serve.mjs";

const run = promisify(execFile);
const expected = process.argv[2];
if (!expected) {
  console.error("usage: node test.mjs EXPECTED_TOP1 [--screenshot FILE]");
  process.exit(2);
}
const shot = process.argv.indexOf("--screenshot");
const chromium = process.env.CHROMIUM ?? "/usr/bin/chromium";
const server = await serve(0);
const url = `http://127.0.0.1:${server.address().port}/index.html?image=fixture.png`;
// The flags the machine notes ask for (no background networking on a closed network).
const flags = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  `--user-data-dir=${mkdtempSync(join(tmpdir(), "densenet-web-"))}`,
  "--virtual-time-budget=20000",
];
let failed = false;
try {
  const { stdout } = await run(chromium, [...flags, "--dump-dom", url], { timeout: 120000 });
  const match = stdout.match(/<pre id="result"[^>]*>([^<]*)<\/pre>/);
  const answer = match ? JSON.parse(match[1].replaceAll("&quot;", '"')) : null;
  const top1 = answer?.top?.[0]?.label;
  console.log(`page: ${match ? match[1] : "(no result)"}`);
  console.log(`top-1 in the browser: ${top1}; native: ${expected}`);
  failed = top1 !== expected;
  if (shot > 0) {
    await run(chromium, [...flags, "--window-size=800,640", `--screenshot=${process.argv[shot + 1]}`, url], {
      timeout: 120000,
    });
    console.log(`screenshot: ${process.argv[shot + 1]}`);
  }
} catch (e) {
  console.error(e.message);
  failed = true;
}
server.close();
process.exit(failed ? 1 : 0);

// Loads pages of a starchive gallery from file:// in chromium and checks
// what a person looking at them relies on:
// - every <img> decoded (naturalWidth > 0) and every <video> has a frame
//   (readyState >= HAVE_CURRENT_DATA, videoWidth > 0);
// - every animated (tgs) player drew something: its SVG has painted shapes
//   and the element looks different with the SVG hidden;
// - the console shows no error and no page error;
// - no request goes anywhere but file://.
//   node check.mjs SCREENSHOT.png PAGE.html [PAGE.html ...]
// (env CHROMIUM: the browser, default /usr/bin/chromium; CHECK_WAIT_MS)
// Prints one JSON document (per page: counts) on stdout; exits 1 on any failure.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const [screenshot, ...pages] = process.argv.slice(2);
// How long a video or a player may take to show something.
const WAIT_MS = Number(process.env.CHECK_WAIT_MS || 10000);
if (!screenshot || pages.length === 0) {
  console.error("usage: node check.mjs SCREENSHOT.png PAGE.html [PAGE.html ...]");
  process.exit(2);
}
const profile = mkdtempSync(join(tmpdir(), "starchive-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
  ],
  viewport: { width: 1280, height: 900 },
});
const failures = [];
const report = { pages: [] };
try {
  const page = await context.newPage();
  page.on("console", (msg) => {
    if (msg.type() === "error") failures.push(`console error on ${page.url()}: ${msg.text()}`);
  });
  page.on("pageerror", (err) => failures.push(`page error on ${page.url()}: ${err.message}`));
  context.on("request", (req) => {
    if (!req.url().startsWith("file://")) failures.push(`request off the machine: ${req.url()}`);
  });
  for (const [i, path] of pages.entries()) {
    const url = pathToFileURL(resolve(path)).href;
    await page.goto(url, { waitUntil: "load" });
    // Bring every lazy image into view, then wait for each to decode.
    const images = await page.$$eval("img", (imgs) => imgs.length);
    for (let n = 0; n < images; n++) {
      const img = page.locator("img").nth(n);
      await img.scrollIntoViewIfNeeded();
      const ok = await img.evaluate(async (el) => {
        try { await el.decode(); } catch (e) { return `${el.getAttribute("src")}: ${e}`; }
        return el.naturalWidth > 0 ? "" : `${el.getAttribute("src")}: naturalWidth 0`;
      });
      if (ok) failures.push(`image did not decode on ${path}: ${ok}`);
    }
    const videos = await page.$$eval("video", (vs) => vs.length);
    for (let n = 0; n < videos; n++) {
      const video = page.locator("video").nth(n);
      await video.scrollIntoViewIfNeeded();
      const ok = await video.evaluate((el, wait) => new Promise((done) => {
        const check = () => el.readyState >= 2 && el.videoWidth > 0;
        if (check()) return done("");
        const t = setTimeout(() => done(`${el.getAttribute("src")}: readyState ${el.readyState}, error ${el.error && el.error.message}`), wait);
        el.addEventListener("loadeddata", () => { clearTimeout(t); done(check() ? "" : `readyState ${el.readyState}`); });
        el.addEventListener("error", () => { clearTimeout(t); done(`${el.getAttribute("src")}: ${el.error && el.error.message}`); });
      }), WAIT_MS);
      if (ok) failures.push(`video has no frame on ${path}: ${ok}`);
    }
    const players = await page.$$eval("[data-tgs]", (ps) => ps.length);
    for (let n = 0; n < players; n++) {
      const player = page.locator("[data-tgs]").nth(n);
      await player.scrollIntoViewIfNeeded();
      const sha = await player.getAttribute("data-tgs");
      try {
        await player.locator("svg").waitFor({ timeout: WAIT_MS });
      } catch {
        failures.push(`tgs player ${sha} on ${path} made no svg`);
        continue;
      }
      const painted = await player.evaluate((el) => {
        let area = 0;
        for (const shape of el.querySelectorAll("svg path")) {
          const box = shape.getBBox();
          const style = getComputedStyle(shape);
          const visible = style.fill !== "none" || style.stroke !== "none";
          if (visible && shape.getAttribute("d")) area += box.width * box.height;
        }
        return area;
      });
      const shown = await player.screenshot();
      await player.evaluate((el) => (el.querySelector("svg").style.visibility = "hidden"));
      const hidden = await player.screenshot();
      await player.evaluate((el) => (el.querySelector("svg").style.visibility = ""));
      if (!(painted > 0) || shown.equals(hidden)) {
        failures.push(`tgs player ${sha} on ${path} drew nothing (painted area ${painted})`);
      }
    }
    const placeholders = await page.$$eval(".placeholder", (ps) => ps.length);
    const links = await page.$$eval("a[href], img[src], video[src], script[src], link[href]",
      (els) => els.map((e) => e.href || e.src));
    report.pages.push({ path, images, videos, players, placeholders, links: links.length });
    if (i === pages.length - 1 || pages.length === 1) {
      await page.evaluate(() => window.scrollTo(0, 0));
      await page.screenshot({ path: screenshot, fullPage: true });
    }
  }
} catch (e) {
  failures.push(`browser: ${e.stack || e}`);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
report.failures = failures;
console.log(JSON.stringify(report, null, 2));
process.exit(failures.length ? 1 : 0);

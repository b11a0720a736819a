// Makes fixtures/sticker.webm, the video sticker of the browser test: one
// second of a moving disc, VP9 with alpha like Telegram's video stickers,
// recorded by chromium itself (MediaRecorder), so that no encoder has to be
// installed. Run once; the file is committed.
//   node make-webm.mjs [/usr/bin/chromium]
import { chromium } from "playwright-core";
import { writeFileSync } from "node:fs";

const browser = await chromium.launch({
  executablePath: process.argv[2] || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu"],
});
const page = await browser.newPage();
const b64 = await page.evaluate(async () => {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 64;
  const g = canvas.getContext("2d");
  const stream = canvas.captureStream(30);
  const rec = new MediaRecorder(stream, { mimeType: "video/webm;codecs=vp9" });
  const chunks = [];
  rec.ondataavailable = (e) => chunks.push(e.data);
  const done = new Promise((r) => (rec.onstop = r));
  rec.start();
  const t0 = performance.now();
  await new Promise((resolve) => {
    (function frame() {
      const t = (performance.now() - t0) / 1000;
      g.clearRect(0, 0, 64, 64);
      g.fillStyle = "#2457c5";
      g.beginPath();
      g.arc(32 + 18 * Math.cos(t * 6), 32 + 18 * Math.sin(t * 6), 12, 0, 2 * Math.PI);
      g.fill();
      if (t < 1) requestAnimationFrame(frame);
      else resolve();
    })();
  });
  rec.stop();
  await done;
  const buf = new Uint8Array(await new Blob(chunks).arrayBuffer());
  let s = "";
  for (const b of buf) s += String.fromCharCode(b);
  return btoa(s);
});
await browser.close();
const out = new URL("fixtures/sticker.webm", import.meta.url);
writeFileSync(out, Buffer.from(b64, "base64"));
console.log(`wrote ${out.pathname} (${Buffer.from(b64, "base64").length} bytes)`);

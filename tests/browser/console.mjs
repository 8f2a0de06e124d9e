// Opens a console page in headless Debian chromium and checks that it really works.
//
// Usage: node tests/browser/console.mjs <console url> <screenshot.png>
// Prints one JSON line of findings; exits 0 only when the page connected, drew a
// non-uniform picture, redrew after a click and a key press, and saw no CSP violation.
// The console id never appears in the output: it is replaced by "<console-id>".
import { chromium } from "playwright-core";

const OVERALL_TIMEOUT_MS = 45000;
const CONNECT_TIMEOUT_MS = 20000;
const STEP_TIMEOUT_MS = 10000;
const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-dev-shm-usage", // containers often have a tiny /dev/shm
];

const [url, screenshotPath] = process.argv.slice(2);
if (!url || !screenshotPath) {
  console.error("usage: node console.mjs <console url> <screenshot.png>");
  process.exit(64);
}
const consoleId = new URL(url).pathname.split("/").pop();
const redact = (text) => String(text).split(consoleId).join("<console-id>");

const findings = {
  ok: false,
  failed_at: null,
  page_status: null,
  states: [],
  connected: false,
  distinct_colours: 0,
  palette: [], // colours on the canvas once connected, as rrggbb hex (at most 256)
  changed_after_click: false,
  changed_after_key: false,
  csp_violations: [],
  page_errors: [],
  failed_requests: [],
  websockets: [], // one entry per attempt: how it ended, as the browser saw it
};

function finish(code) {
  process.stdout.write(`${redact(JSON.stringify(findings))}\n`);
  process.exit(code);
}

// Runs in the page before its own scripts: records state changes and CSP violations.
function instrument() {
  window.__cgw = { states: [], csp: [] };
  // Distinct colours and a fingerprint of noVNC's canvas, from every 3rd pixel.
  window.__cgw.summary = () => {
    const canvas = document.querySelector("#screen canvas");
    if (!canvas || canvas.width === 0 || canvas.height === 0) {
      return { colours: 0, print: 0, palette: [] };
    }
    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    const colours = new Set();
    let print = 2166136261;
    for (let i = 0; i < data.length; i += 12) {
      const rgb = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];
      if (colours.size < 4096) {
        colours.add(rgb);
      }
      print = Math.imul(print ^ rgb, 16777619) >>> 0;
    }
    const palette = [...colours].slice(0, 256).map((c) => c.toString(16).padStart(6, "0"));
    return { colours: colours.size, print, palette };
  };
  document.addEventListener("securitypolicyviolation", (event) => {
    window.__cgw.csp.push(`${event.violatedDirective} ${event.blockedURI}`);
  });
  new MutationObserver(() => {
    const state = document.body && document.body.dataset.state;
    const states = window.__cgw.states;
    if (state && states[states.length - 1] !== state) {
      states.push(state);
    }
  }).observe(document, {
    subtree: true,
    childList: true,
    attributes: true,
    attributeFilter: ["data-state"],
  });
}

async function step(name, action) {
  findings.failed_at = name;
  await action();
}

async function run(page) {
  page.on("console", (msg) => {
    if (msg.text().includes("Content Security Policy")) {
      findings.csp_violations.push(msg.text());
    }
  });
  page.on("pageerror", (error) => findings.page_errors.push(error.message));
  page.on("requestfailed", (request) => {
    findings.failed_requests.push(new URL(request.url()).pathname);
  });
  page.on("response", (response) => {
    if (response.status() >= 400) {
      findings.failed_requests.push(`${response.status()} ${new URL(response.url()).pathname}`);
    }
  });
  page.on("websocket", (socket) => {
    const entry = { path: new URL(socket.url()).pathname, error: null, closed: false };
    findings.websockets.push(entry);
    socket.on("socketerror", (error) => {
      entry.error = String(error).split("\n")[0];
    });
    socket.on("close", () => {
      entry.closed = true;
    });
  });
  await page.addInitScript(instrument);
  await step("load", async () => {
    const response = await page.goto(url, { waitUntil: "load", timeout: STEP_TIMEOUT_MS });
    findings.page_status = response.status();
    if (response.status() !== 200) {
      throw new Error(`page answered ${response.status()}`);
    }
  });
  await step("connected", async () => {
    await page.waitForSelector('body[data-state="connected"]', { timeout: CONNECT_TIMEOUT_MS });
    findings.connected = true;
  });
  let before;
  await step("picture", async () => {
    const handle = await page.waitForFunction(
      () => {
        const summary = window.__cgw.summary();
        return summary.colours > 1 ? summary : null;
      },
      null,
      { timeout: STEP_TIMEOUT_MS, polling: 100 },
    );
    before = await handle.jsonValue();
    findings.distinct_colours = before.colours;
    findings.palette = before.palette;
  });
  const changedFrom = (print) =>
    page.waitForFunction((previous) => window.__cgw.summary().print !== previous, print, {
      timeout: STEP_TIMEOUT_MS,
      polling: 100,
    });
  await step("click", async () => {
    const box = await page.locator("#screen canvas").boundingBox();
    await page.mouse.click(box.x + box.width / 2, box.y + box.height / 2);
    await changedFrom(before.print);
    findings.changed_after_click = true;
  });
  await step("key", async () => {
    // Measured after the click's redraw has settled, so only the key can change the picture.
    await page.waitForTimeout(300);
    const settled = await page.evaluate(() => window.__cgw.summary().print);
    await page.keyboard.press("a");
    await changedFrom(settled);
    findings.changed_after_key = true;
  });
  findings.failed_at = null;
}

async function main() {
  const timer = setTimeout(() => {
    findings.page_errors.push(`overall timeout after ${OVERALL_TIMEOUT_MS} ms`);
    finish(3);
  }, OVERALL_TIMEOUT_MS);
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: CHROMIUM_ARGS,
  });
  let code = 1;
  try {
    const page = await browser.newPage({ viewport: { width: 1024, height: 768 } });
    try {
      await run(page);
    } catch (error) {
      findings.page_errors.push(`${findings.failed_at}: ${error.message.split("\n")[0]}`);
    }
    const seen = await page
      .evaluate(() => ({ states: window.__cgw.states, csp: window.__cgw.csp }))
      .catch(() => null);
    if (seen) {
      findings.states = seen.states;
      findings.csp_violations.push(...seen.csp);
    }
    await page.screenshot({ path: screenshotPath }).catch(() => {});
    findings.ok = findings.failed_at === null && findings.csp_violations.length === 0;
    code = findings.ok ? 0 : 1;
  } finally {
    clearTimeout(timer);
    await browser.close();
  }
  finish(code);
}

main().catch((error) => {
  findings.page_errors.push(`harness: ${error.message.split("\n")[0]}`);
  finish(2);
});

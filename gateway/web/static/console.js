// The console page: connects noVNC to this console's WebSocket and reconnects with backoff.
//
// The console id is read from the page's own URL (/console/<id>), never templated into the
// page. The WebSocket is opened here rather than by noVNC so that its close code is visible:
// the gateway closes with 4404 (unknown console) or 4410 (revoked or expired), after which
// reconnecting is pointless. A refused handshake (HTTP 4xx before the upgrade) shows up as
// 1006 like any network failure, so those are retried, at most MAX_FAILURES times in a row.

const GONE_CODES = new Map([
  [4404, "This console link is not valid. Open the console again from the portal."],
  [4410, "This console link has expired or was revoked. Open the console again from the portal."],
]);
const MAX_FAILURES = 10;
const MAX_DELAY_S = 30;
// A connection that dropped sooner than this counts as a failed attempt, so a server that
// accepts and immediately closes cannot make the page reconnect forever.
const STABLE_AFTER_MS = 10000;

const statusEl = document.getElementById("status");
const screenEl = document.getElementById("screen");

let failures = 0;
let rfb = null;

function setState(state, text) {
  document.body.dataset.state = state;
  statusEl.textContent = text;
}

// 1 s, 2 s, 4 s ... capped at MAX_DELAY_S.
function backoffSeconds(failureCount) {
  return Math.min(2 ** Math.max(0, failureCount - 1), MAX_DELAY_S);
}

function consoleId() {
  const parts = location.pathname.split("/");
  return parts[parts.length - 1];
}

function websocketUrl() {
  // Relative to the page, so a gateway served under a path prefix still works.
  const url = new URL(`../ws/${consoleId()}`, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.search = "";
  url.hash = "";
  return url.href;
}

function connect(RFB) {
  setState("connecting", "Connecting…");
  const socket = new WebSocket(websocketUrl());
  let closeCode = 0;
  // Registered before noVNC's onclose, so the code is known when "disconnect" fires.
  socket.addEventListener("close", (event) => {
    closeCode = event.code;
  });
  let connectedAt = 0;
  rfb = new RFB(screenEl, socket);
  rfb.scaleViewport = true;
  rfb.focusOnClick = true;
  rfb.addEventListener("connect", () => {
    connectedAt = Date.now();
    setState("connected", "Connected");
    rfb.focus();
  });
  rfb.addEventListener("desktopname", (event) => {
    document.title = `${event.detail.name} – console`;
  });
  rfb.addEventListener("credentialsrequired", () => {
    // The gateway never hands VNC passwords to browsers; there is nothing to type in.
    failures = MAX_FAILURES;
    rfb.disconnect();
  });
  rfb.addEventListener("disconnect", () => {
    rfb = null;
    if (connectedAt && Date.now() - connectedAt >= STABLE_AFTER_MS) {
      failures = 0;
    }
    onDisconnect(RFB, closeCode);
  });
}

function onDisconnect(RFB, closeCode) {
  if (GONE_CODES.has(closeCode)) {
    setState("gone", GONE_CODES.get(closeCode));
    return;
  }
  failures += 1;
  if (failures >= MAX_FAILURES) {
    setState("failed", "Could not connect to the console. Reload the page to try again.");
    return;
  }
  countdown(RFB, backoffSeconds(failures));
}

function countdown(RFB, seconds) {
  if (seconds <= 0) {
    connect(RFB);
    return;
  }
  setState("disconnected", `Disconnected — reconnecting in ${seconds} s`);
  setTimeout(() => countdown(RFB, seconds - 1), 1000);
}

screenEl.addEventListener("click", () => {
  if (rfb) {
    rfb.focus();
  }
});

import("./novnc/core/rfb.js").then(
  (module) => connect(module.default),
  () => setState("error", "The console client could not be loaded. Reload the page to try again."),
);

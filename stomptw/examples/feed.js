// Frame inspector: logs every STOMP frame this page sends and receives,
// heart-beats included, through StompClient's onframe hook.
import { StompClient, defaultEndpoint } from "./stomp.js";
import { authRequired, loginHeaders, showLoginForm } from "./login.js";

const MAX_FRAMES = 500;
const $ = (id) => document.getElementById(id);
const urlInput = $("url");
const destinationInput = $("destination");
const hbInput = $("hb");
const connectButton = $("connect");
const disconnectButton = $("disconnect");
const stateEl = $("state");
const heartbeatEl = $("heartbeat");
const bodyInput = $("body");
const publishButton = $("publish");
const frames = $("frames");

urlInput.value = defaultEndpoint();

/** @type {StompClient|null} */
let client = null;
let destination = "";
let published = 0;
/** The heart-beat header values of our CONNECT and the broker's CONNECTED. */
let offered = "";
let answered = "";

function showState(state) {
  stateEl.textContent = state;
  stateEl.className = `state ${state}`;
  connectButton.disabled = state !== "closed";
  disconnectButton.disabled = state === "closed" || state === "disconnecting";
  publishButton.disabled = state !== "connected";
  urlInput.disabled = destinationInput.disabled = hbInput.disabled = state !== "closed";
  showHeartbeat();
}

function showHeartbeat() {
  if (!client || client.state !== "connected") {
    heartbeatEl.textContent = "not connected";
    return;
  }
  const last = client.lastHeartbeat ? new Date(client.lastHeartbeat).toLocaleTimeString() : "none yet";
  heartbeatEl.textContent =
    `out ${client.heartbeatOut} ms / in ${client.heartbeatIn} ms ` +
    `(we offered ${offered}, the broker ${answered}) · last heart-beat received: ${last}`;
}

function logFrame(direction, frame) {
  const li = document.createElement("li");
  const time = document.createElement("span");
  time.className = "dir";
  time.textContent = `${direction === "in" ? "⇦ in " : "⇨ out"} ${new Date().toLocaleTimeString()}`;
  const command = document.createElement("span");
  command.className = "command";
  command.textContent = frame.command;
  li.append(time, command);
  if (frame.command === "HEARTBEAT") {
    li.className = `frame ${direction} heartbeat`;
    if (direction === "in") showHeartbeat();
  } else {
    li.className = `frame ${direction} ${frame.command.toLowerCase()}`;
    const headers = Object.entries(frame.headers).map(([k, v]) => `\n${k}:${v}`).join("");
    li.append(document.createTextNode(headers));
    if (frame.body) {
      const body = document.createElement("span");
      body.className = "body";
      body.textContent = frame.body;
      li.append(body);
    }
  }
  frames.prepend(li);
  while (frames.children.length > MAX_FRAMES) frames.lastElementChild.remove();
}

function logNote(text) {
  const li = document.createElement("li");
  li.className = "note meta";
  li.textContent = text;
  frames.prepend(li);
}

async function connect() {
  const ms = Math.max(0, parseInt(hbInput.value, 10) || 0);
  destination = destinationInput.value.trim() || "/topic/feed";
  const c = new StompClient(urlInput.value.trim(), { heartbeat: [ms, ms] });
  offered = `${ms},${ms}`;
  answered = "";
  client = c;
  c.onframe = (direction, frame) => {
    if (frame.command === "CONNECTED") answered = frame.headers["heart-beat"] || "0,0";
    logFrame(direction, frame);
  };
  c.onstatechange = (state) => { if (c === client) showState(state); };
  c.onerror = (frame) => logNote(`ERROR: ${frame.headers.message || ""}`);
  c.onclose = (event) => logNote(`WebSocket closed: code ${event.code} ${event.reason || ""}`);
  try {
    await c.connect(loginHeaders());
    await c.subscribe(destination, () => {}, { receipt: c.nextId("subscribed") }).receipt;
  } catch (err) {
    logNote(`Connect failed: ${err.message}`);
    if (authRequired) showLoginForm(`The broker refused the login: ${err.message}`);
  }
}

connectButton.addEventListener("click", connect);
disconnectButton.addEventListener("click", () => client && client.disconnect());
publishButton.addEventListener("click", () => {
  if (!client || client.state !== "connected") return;
  published += 1;
  const body = bodyInput.value || `hello ${published}`;
  client.send(destination, body, { "content-type": "text/plain", receipt: client.nextId("sent") })
    .catch((err) => logNote(`Send failed: ${err.message}`));
  bodyInput.value = "";
});
bodyInput.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.isComposing) {
    event.preventDefault();
    publishButton.click();
  }
});
$("clear").addEventListener("click", () => frames.replaceChildren());
setInterval(showHeartbeat, 1000);

showState("closed");
// Waits for the Connect button, unless the page is opened with ?connect=1.
if (new URLSearchParams(location.search).get("connect") === "1") connect();

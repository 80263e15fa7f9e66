// Live feed: the page reads a /stream/ destination from its first message,
// and StompClient's reconnectDelay makes it reconnect after a drop and resume
// the stream after the last offset it showed, so every update appears once.
import { StompClient } from "./stomp.js";
import { connectWithLogin } from "./login.js";

const params = new URLSearchParams(location.search);
const stream = params.get("stream") || "/stream/live";
const parsedDelay = parseInt(params.get("reconnect") ?? "", 10);
const delay = Number.isFinite(parsedDelay) && parsedDelay > 0 ? parsedDelay : 1000;

const $ = (id) => document.getElementById(id);
const status = $("status");
const textInput = $("text");
const postButton = $("post");
const updates = $("updates");
$("stream").textContent = stream;
$("delay").textContent = String(delay);

let received = 0;
let reconnects = 0;

function showState(state) {
  status.textContent = state;
  status.className = `state ${state}`;
  postButton.disabled = state !== "connected";
}

function notice(text) {
  const li = document.createElement("li");
  li.className = "notice meta";
  li.textContent = text;
  updates.prepend(li);
}

const client = new StompClient(undefined, { reconnectDelay: delay });
client.onstatechange = showState;
client.onerror = (frame) => notice(`ERROR from broker: ${frame.headers.message || ""}`);
client.onclose = (event) => notice(`Connection lost (${event.code}); reconnecting in ${delay} ms.`);
client.onreconnect = () => {
  reconnects += 1;
  $("reconnects").textContent = String(reconnects);
  notice("Reconnected: resuming the stream where this page left it.");
};

function onUpdate(message) {
  const h = message.headers;
  if (h["x-stream-recovered"] === "false") {
    notice("Some updates were trimmed from the stream while this page was away; reload for the full picture.");
  }
  received += 1;
  $("count").textContent = String(received);
  $("offset").textContent = h["x-stream-offset"];
  const li = document.createElement("li");
  li.className = "update";
  li.dataset.offset = h["x-stream-offset"];
  li.textContent = `#${h["x-stream-offset"]} ${message.body}`;
  updates.prepend(li);
}

postButton.addEventListener("click", () => {
  const text = textInput.value.trim();
  if (!text) return;
  client.send(stream, text, { "content-type": "text/plain" });
  textInput.value = "";
  textInput.focus();
});
textInput.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.isComposing) {
    event.preventDefault();
    postButton.click();
  }
});
window.addEventListener("pagehide", () => client.disconnect());

showState("connecting");
try {
  await connectWithLogin(client);
  await client.subscribe(stream, onUpdate, {
    "x-stream-offset": params.get("from") || "first",
    receipt: client.nextId("subscribed"),
  }).receipt;
} catch (err) {
  notice(`Could not connect to ${client.url}: ${err.message}`);
  showState(client.state);
}

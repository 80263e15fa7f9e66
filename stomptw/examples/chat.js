// Chat room: every tab subscribes to the same /topic/, and every message sent
// to a topic goes to every subscriber.
import { StompClient } from "./stomp.js";
import { connectWithLogin } from "./login.js";

const params = new URLSearchParams(location.search);
const room = params.get("room") || "lobby";
const destination = `/topic/chat.${room}`;

const $ = (id) => document.getElementById(id);
const status = $("status");
const nameInput = $("name");
const messageInput = $("message");
const sendButton = $("send");
const messages = $("messages");

$("room").textContent = room;
$("destination").textContent = destination;
nameInput.value = `guest-${Math.floor(1000 + Math.random() * 9000)}`;

// "connected" is shown only once the broker has confirmed the SUBSCRIBE with a
// RECEIPT, so nothing sent after that can be missed.
let subscribed = false;

function showState(clientState) {
  const state = clientState === "connected" && !subscribed ? "connecting" : clientState;
  status.textContent = state;
  status.className = `state ${state}`;
  sendButton.disabled = state !== "connected";
}

function addLine(name, text, time) {
  const li = document.createElement("li");
  li.className = "message";
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = name;
  const what = document.createElement("span");
  what.textContent = text;
  const when = document.createElement("span");
  when.className = "meta";
  when.textContent = ` · ${time.toLocaleTimeString()}`;
  li.append(who, what, when);
  messages.append(li);
  li.scrollIntoView({ block: "nearest" });
}

function addNotice(text) {
  const li = document.createElement("li");
  li.className = "notice meta";
  li.textContent = text;
  messages.append(li);
}

const client = new StompClient();
client.onstatechange = showState;
client.onerror = (frame) => addNotice(`ERROR from broker: ${frame.headers.message || ""} ${frame.body}`);
client.onclose = (event) => addNotice(`Connection closed (${event.code}). Reload the page to reconnect.`);

function onMessage(message) {
  let name = "?";
  let text = message.body;
  try {
    const data = JSON.parse(message.body);
    name = String(data.name ?? "?");
    text = String(data.text ?? "");
  } catch {
    // Not JSON (sent by some other client): show the raw body.
  }
  addLine(name, text, new Date());
}

function send() {
  const text = messageInput.value.trim();
  if (!text || client.state !== "connected") return;
  const name = nameInput.value.trim() || "anonymous";
  client.send(destination, JSON.stringify({ name, text }), { "content-type": "application/json" });
  messageInput.value = "";
  messageInput.focus();
}

sendButton.addEventListener("click", send);
messageInput.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
window.addEventListener("pagehide", () => client.disconnect());

showState("connecting");
try {
  await connectWithLogin(client);
  await client.subscribe(destination, onMessage, { receipt: client.nextId("subscribed") }).receipt;
  subscribed = true;
  showState(client.state);
  messageInput.focus();
} catch (err) {
  addNotice(`Could not connect to ${client.url}: ${err.message}`);
  showState(client.state);
}

// Work queue: every tab subscribes to the same /queue/, and the broker gives each
// task to one subscriber only. With ack "client-individual" and prefetch-count 1
// a tab holds at most one unacknowledged task; if the tab closes before it ACKs,
// the broker redelivers that task to another tab with a "redelivered" header.
import { StompClient } from "./stomp.js";
import { connectWithLogin } from "./login.js";

const QUEUE = "/queue/work";
const params = new URLSearchParams(location.search);
const parsedDelay = parseInt(params.get("delay") ?? "", 10);
const delay = Number.isFinite(parsedDelay) && parsedDelay >= 0 ? parsedDelay : 1000;

const $ = (id) => document.getElementById(id);
const status = $("status");
const taskInput = $("task");
const addButton = $("add");
const add10Button = $("add10");
const working = $("working");
const done = $("done");
const doneCount = $("done-count");

const workerName = `worker-${Math.random().toString(36).slice(2, 6)}`;
$("worker").textContent = workerName;
$("delay").textContent = String(delay);

// "connected" is shown only once the broker confirmed the SUBSCRIBE.
let subscribed = false;
let finished = 0;

function showState(clientState) {
  const state = clientState === "connected" && !subscribed ? "connecting" : clientState;
  status.textContent = state;
  status.className = `state ${state}`;
  addButton.disabled = add10Button.disabled = state !== "connected";
}

function notice(text) {
  const li = document.createElement("li");
  li.className = "notice meta";
  li.textContent = text;
  done.prepend(li);
}

const client = new StompClient();
client.onstatechange = showState;
client.onerror = (frame) => notice(`ERROR from broker: ${frame.headers.message || ""} ${frame.body}`);
client.onclose = (event) => {
  working.textContent = "";
  notice(`Connection closed (${event.code}). Reload the page to reconnect.`);
};

function onTask(message) {
  const redelivered = message.headers.redelivered === "true";
  working.textContent = message.body + (redelivered ? " (redelivered)" : "");
  setTimeout(() => {
    if (client.state !== "connected") return; // unacked: the broker redelivers it
    client.ack(message);
    working.textContent = "";
    finished += 1;
    doneCount.textContent = String(finished);
    const li = document.createElement("li");
    li.className = redelivered ? "task redelivered" : "task";
    li.textContent = message.body;
    if (redelivered) li.title = "redelivered: true (another consumer had it unacknowledged)";
    li.dataset.redelivered = String(redelivered);
    li.dataset.messageId = message.headers["message-id"] || "";
    done.prepend(li);
  }, delay);
}

function addTask(text) {
  return client.send(QUEUE, text, { "content-type": "text/plain" });
}

addButton.addEventListener("click", () => {
  const text = taskInput.value.trim();
  if (!text) return;
  addTask(text);
  taskInput.value = "";
  taskInput.focus();
});
taskInput.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.isComposing) {
    event.preventDefault();
    addButton.click();
  }
});
add10Button.addEventListener("click", () => {
  const batch = Math.random().toString(36).slice(2, 6);
  for (let i = 1; i <= 10; i++) addTask(`${batch} task ${i}`);
});
window.addEventListener("pagehide", () => client.disconnect());

showState("connecting");
try {
  await connectWithLogin(client);
  const sub = client.subscribe(QUEUE, onTask, {
    ack: "client-individual",
    "prefetch-count": "1",
    receipt: client.nextId("subscribed"),
  });
  await sub.receipt;
  subscribed = true;
  showState(client.state);
} catch (err) {
  notice(`Could not connect to ${client.url}: ${err.message}`);
  showState(client.state);
}

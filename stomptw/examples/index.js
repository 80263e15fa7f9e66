// The landing page: show the real WebSocket endpoint and TCP listeners of this broker.
import { defaultEndpoint } from "./stomp.js";

const url = defaultEndpoint();
document.getElementById("endpoint").textContent = url;
const snippet = document.getElementById("snippet");
snippet.textContent = snippet.textContent.replace("ws://localhost/ws", url);
const tcp = globalThis.STOMPTW_TCP;
if (Array.isArray(tcp)) {
  document.getElementById("tcp").textContent = tcp.length
    ? tcp.join(", ")
    : "no listener (the broker runs with --no-tcp)";
}

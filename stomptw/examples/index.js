// The landing page: show the real WebSocket endpoint of this broker.
import { defaultEndpoint } from "./stomp.js";

const url = defaultEndpoint();
document.getElementById("endpoint").textContent = url;
const snippet = document.getElementById("snippet");
snippet.textContent = snippet.textContent.replace("ws://localhost/ws", url);

/**
 * stomp.js: a small STOMP 1.2 (and 1.1 / 1.0) client over the browser's WebSocket.
 *
 * Written for the stomptw examples; no dependencies. Usage:
 *
 *   import { StompClient, defaultEndpoint } from "./stomp.js";
 *   const client = new StompClient(defaultEndpoint());
 *   await client.connect({ login: "guest", passcode: "guest" });
 *   client.subscribe("/topic/hello", (message) => console.log(message.body));
 *   await client.send("/topic/hello", "hi", { receipt: "r1" });
 *   await client.disconnect();
 *
 * @module stomp
 */

/** WebSocket subprotocols offered, most preferred first. */
export const SUBPROTOCOLS = ["v12.stomp", "v11.stomp", "v10.stomp"];

/**
 * The broker's own STOMP-over-WebSocket URL: same host as this page, path from
 * `window.STOMPTW_WS_PATH` (set by the server's config.js), else "/ws".
 * @returns {string}
 */
export function defaultEndpoint() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}${globalThis.STOMPTW_WS_PATH || "/ws"}`;
}

/**
 * @typedef {Object} Frame
 * @property {string} command   e.g. "MESSAGE", or "HEARTBEAT" for the pseudo frame.
 * @property {Object<string,string>} headers  first occurrence of each header wins.
 * @property {string} body      the body decoded as UTF-8.
 * @property {Uint8Array} binaryBody  the raw body bytes.
 */

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8");
const NO_ESCAPE = new Set(["CONNECT", "CONNECTED"]);
const UNESCAPES = { "\\": "\\", n: "\n", r: "\r", c: ":" };

/** Escape a header name or value (STOMP 1.2 rules; 1.1 has no \r escape). */
function escapeHeader(text, version) {
  if (version === "1.0") return text.replace(/[\r\n]/g, " ");
  let out = text.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/:/g, "\\c");
  return version === "1.1" ? out : out.replace(/\r/g, "\\r");
}

/** Undo escapeHeader; unknown escapes are kept as they are. */
function unescapeHeader(text) {
  return text.replace(/\\(.)/g, (all, c) => (c in UNESCAPES ? UNESCAPES[c] : all));
}

/**
 * Encode one frame. CONNECT and CONNECTED headers are never escaped.
 * @param {string} command
 * @param {Object<string,string>} headers
 * @param {string|Uint8Array|ArrayBuffer} [body]
 * @param {string} [version] negotiated version ("1.2" when unknown).
 * @returns {{text: string|null, bytes: Uint8Array}} `text` is set when the frame is valid UTF-8 text.
 */
export function encodeFrame(command, headers = {}, body = "", version = "1.2") {
  const isText = typeof body === "string";
  const bodyBytes = isText ? encoder.encode(body) : new Uint8Array(body);
  const escape = NO_ESCAPE.has(command) ? (s) => s : (s) => escapeHeader(s, version);
  const lines = [command];
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || value === null || name === "content-length") continue;
    lines.push(`${escape(name)}:${escape(String(value))}`);
  }
  if (bodyBytes.length > 0) lines.push(`content-length:${bodyBytes.length}`);
  const head = lines.join("\n") + "\n\n";
  if (isText) return { text: head + body + "\0", bytes: null };
  const headBytes = encoder.encode(head);
  const bytes = new Uint8Array(headBytes.length + bodyBytes.length + 1);
  bytes.set(headBytes, 0);
  bytes.set(bodyBytes, headBytes.length);
  return { text: null, bytes };
}

/**
 * Streaming frame parser. Feed it WebSocket message data with push(); it calls
 * onFrame(frame) for each complete frame and onHeartbeat() for each EOL received
 * between frames. Frames may be split across pushes and one push may hold many.
 */
export class FrameParser {
  /**
   * @param {(frame: Frame) => void} onFrame
   * @param {() => void} [onHeartbeat]
   * @param {number} [maxBuffer] bytes of an incomplete frame tolerated.
   */
  constructor(onFrame, onHeartbeat = () => {}, maxBuffer = 16 * 1024 * 1024) {
    this.onFrame = onFrame;
    this.onHeartbeat = onHeartbeat;
    this.maxBuffer = maxBuffer;
    this.buffer = new Uint8Array(0);
    /** Negotiated version; headers are not unescaped in STOMP 1.0. */
    this.version = null;
  }

  /** @param {string|ArrayBuffer|Uint8Array} data */
  push(data) {
    const chunk = typeof data === "string" ? encoder.encode(data) : new Uint8Array(data);
    if (this.buffer.length === 0) {
      this.buffer = chunk;
    } else {
      const joined = new Uint8Array(this.buffer.length + chunk.length);
      joined.set(this.buffer, 0);
      joined.set(chunk, this.buffer.length);
      this.buffer = joined;
    }
    let pos = 0;
    for (;;) {
      const next = this._parseOne(pos);
      if (next < 0) break;
      pos = next;
    }
    this.buffer = this.buffer.slice(pos);
    if (this.buffer.length > this.maxBuffer) throw new Error("STOMP frame too large");
  }

  /** Parse one heart-beat or frame at pos; return the new position or -1 for "need more". */
  _parseOne(pos) {
    const buf = this.buffer;
    if (pos >= buf.length) return -1;
    if (buf[pos] === 10) { this.onHeartbeat(); return pos + 1; }
    if (buf[pos] === 13) {
      if (pos + 1 >= buf.length) return -1;
      if (buf[pos + 1] === 10) { this.onHeartbeat(); return pos + 2; }
    }
    // Find the end of the headers: an empty line.
    const lines = [];
    let start = pos;
    for (;;) {
      const nl = buf.indexOf(10, start);
      if (nl < 0) return -1;
      const end = nl > start && buf[nl - 1] === 13 ? nl - 1 : nl;
      const line = decoder.decode(buf.subarray(start, end));
      start = nl + 1;
      if (line === "") break;
      lines.push(line);
    }
    const command = lines.shift();
    const raw = !NO_ESCAPE.has(command) && this.version !== "1.0";
    const headers = {};
    for (const line of lines) {
      const colon = line.indexOf(":");
      if (colon < 0) continue;
      let name = line.slice(0, colon);
      let value = line.slice(colon + 1);
      if (raw) { name = unescapeHeader(name); value = unescapeHeader(value); }
      if (!(name in headers)) headers[name] = value;
    }
    let bodyEnd;
    if ("content-length" in headers) {
      bodyEnd = start + parseInt(headers["content-length"], 10);
      if (bodyEnd >= buf.length) return -1;
      if (buf[bodyEnd] !== 0) throw new Error("STOMP frame body not followed by NUL");
    } else {
      bodyEnd = buf.indexOf(0, start);
      if (bodyEnd < 0) return -1;
    }
    const binaryBody = buf.slice(start, bodyEnd);
    this.onFrame({ command, headers, body: decoder.decode(binaryBody), binaryBody });
    return bodyEnd + 1;
  }
}

/**
 * A STOMP client over one WebSocket. Hooks (assign functions):
 * - onframe(direction, frame): every frame "in" or "out", heart-beats as {command: "HEARTBEAT"}.
 * - onstatechange(state): "connecting", "connected", "disconnecting", "closed".
 * - onerror(frame): an ERROR frame from the broker.
 * - onclose(event): the WebSocket closed (a CloseEvent).
 */
export class StompClient {
  /**
   * @param {string} [url] defaults to defaultEndpoint().
   * @param {{heartbeat?: [number, number], protocols?: string[], reconnectDelay?: number}} [options]
   *   heartbeat: [outgoing, incoming] ms offered in CONNECT (default 10000,10000).
   *   reconnectDelay: ms to wait before connecting again after the connection
   *   was lost (not after disconnect()); 0, the default, does not reconnect.
   *   After a reconnect every subscription is made again with its id; a
   *   /stream/ subscription resumes after the last offset it delivered.
   */
  constructor(url = defaultEndpoint(), options = {}) {
    this.url = url;
    this.heartbeat = options.heartbeat || [10000, 10000];
    this.protocols = options.protocols || SUBPROTOCOLS;
    this.reconnectDelay = options.reconnectDelay || 0;
    /** Called after each reconnect, with the CONNECTED frame. */
    this.onreconnect = null;
    /** Negotiated STOMP version, e.g. "1.2", once connected. */
    this.version = null;
    /** Negotiated heart-beat periods in ms (0 = none). */
    this.heartbeatOut = 0;
    this.heartbeatIn = 0;
    /** Date.now() of the last data received and of the last heart-beat received. */
    this.lastReceived = 0;
    this.lastHeartbeat = 0;
    this.state = "closed";
    this.ws = null;
    this.onframe = null;
    this.onstatechange = null;
    this.onerror = null;
    this.onclose = null;
    this._subscriptions = new Map();
    this._receipts = new Map();
    this._counter = 0;
    this._timers = [];
    this._parser = null;
    this._connectWaiter = null;
    this._offered = "0,0";
    /** Subscriptions to make again after a reconnect, by id. */
    this._wanted = new Map();
    this._connectHeaders = {};
    this._stopped = true;
    this._reconnectTimer = null;
  }

  /** @param {string} state */
  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    if (this.onstatechange) this.onstatechange(state);
  }

  /**
   * Open the WebSocket and send CONNECT.
   * @param {Object<string,string>} [headers] extra CONNECT headers, e.g. login, passcode, host.
   * @returns {Promise<Frame>} the CONNECTED frame; rejects on ERROR or close.
   */
  connect(headers = {}) {
    if (this.ws) return Promise.reject(new Error("already connected or connecting"));
    this._connectHeaders = headers;
    this._stopped = false;
    this._setState("connecting");
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new WebSocket(this.url, this.protocols);
      } catch (err) {
        // e.g. a malformed URL: fail without leaving the state at "connecting".
        this._setState("closed");
        reject(err);
        return;
      }
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      this._connectWaiter = { resolve, reject };
      const parser = new FrameParser((f) => this._onFrame(f), () => this._onHeartbeat());
      this._parser = parser;
      ws.addEventListener("open", () => {
        const connect = {
          "accept-version": "1.2,1.1,1.0",
          host: new URL(this.url, location.href).hostname,
          "heart-beat": this.heartbeat.join(","),
          ...headers,
        };
        this._offered = connect["heart-beat"];
        this._transmit("CONNECT", connect);
      });
      ws.addEventListener("message", (event) => {
        this.lastReceived = Date.now();
        try {
          parser.push(event.data);
        } catch (err) {
          console.error("stomp.js:", err);
          ws.close(4002, "unparsable STOMP data");
        }
      });
      ws.addEventListener("close", (event) => this._onClose(event));
    });
  }

  /** Handle one parsed frame from the broker. */
  _onFrame(frame) {
    if (this.onframe) this.onframe("in", frame);
    const h = frame.headers;
    if (frame.command === "CONNECTED") {
      this.version = h.version || "1.0";
      this._parser.version = this.version;
      this._startHeartbeats(h["heart-beat"] || "0,0");
      this._setState("connected");
      const waiter = this._connectWaiter;
      this._connectWaiter = null;
      if (waiter) waiter.resolve(frame);
    } else if (frame.command === "MESSAGE") {
      frame.ack = (headers) => this.ack(frame, headers);
      frame.nack = (headers) => this.nack(frame, headers);
      const callback = this._subscriptions.get(h.subscription);
      if (callback) callback(frame);
    } else if (frame.command === "RECEIPT") {
      const waiter = this._receipts.get(h["receipt-id"]);
      this._receipts.delete(h["receipt-id"]);
      if (waiter) waiter.resolve(frame);
    } else if (frame.command === "ERROR") {
      if (this.onerror) this.onerror(frame);
      const waiter = this._connectWaiter;
      this._connectWaiter = null;
      if (waiter) waiter.reject(Object.assign(new Error(h.message || "STOMP ERROR"), { frame }));
    }
  }

  _onHeartbeat() {
    this.lastHeartbeat = Date.now();
    if (this.onframe) this.onframe("in", { command: "HEARTBEAT", headers: {}, body: "" });
  }

  /**
   * Negotiate heart-beats (STOMP 1.1 section "Heart-beating"): each direction uses the
   * larger of what one side can do and the other wants, or none if either says 0.
   */
  _startHeartbeats(serverValue) {
    const [sx, sy] = serverValue.split(",").map((n) => parseInt(n, 10) || 0);
    const [cx, cy] = this._offered.split(",").map((n) => parseInt(n, 10) || 0);
    this.heartbeatOut = cx && sy ? Math.max(cx, sy) : 0;
    this.heartbeatIn = sx && cy ? Math.max(sx, cy) : 0;
    if (this.heartbeatOut) {
      this._timers.push(setInterval(() => {
        if (this.ws && this.ws.readyState === WebSocket.OPEN) {
          this.ws.send("\n");
          if (this.onframe) this.onframe("out", { command: "HEARTBEAT", headers: {}, body: "" });
        }
      }, this.heartbeatOut));
    }
    if (this.heartbeatIn) {
      this._timers.push(setInterval(() => {
        if (Date.now() - this.lastReceived > 2 * this.heartbeatIn && this.ws) {
          console.warn(`stomp.js: nothing received for ${2 * this.heartbeatIn} ms, closing`);
          this.ws.close(4001, "heart-beat timeout");
        }
      }, this.heartbeatIn));
    }
  }

  _onClose(event) {
    for (const timer of this._timers) clearInterval(timer);
    this._timers = [];
    this.ws = null;
    const error = new Error(`connection closed (${event.code} ${event.reason || ""})`.trim());
    if (this._connectWaiter) this._connectWaiter.reject(error);
    this._connectWaiter = null;
    for (const waiter of this._receipts.values()) waiter.reject(error);
    this._receipts.clear();
    this._subscriptions.clear();
    this._setState("closed");
    if (this.onclose) this.onclose(event);
    if (this.reconnectDelay && !this._stopped && !this._reconnectTimer) {
      this._reconnectTimer = setTimeout(() => this._reconnect(), this.reconnectDelay);
    }
  }

  /** Connect again with the last CONNECT headers, then make every subscription again. */
  _reconnect() {
    this._reconnectTimer = null;
    if (this._stopped || this.ws) return;
    this.connect(this._connectHeaders).then(
      (connected) => {
        for (const [id, entry] of this._wanted) {
          this._subscriptions.set(id, (frame) => this._deliver(entry, frame));
          this._transmit("SUBSCRIBE", this._subscribeHeaders(id, entry));
        }
        if (this.onreconnect) this.onreconnect(connected);
      },
      () => {
        // _onClose already planned the next try (or the client was stopped).
      },
    );
  }

  /** SUBSCRIBE headers for a subscription; a stream's resume where it stopped. */
  _subscribeHeaders(id, entry) {
    const headers = { id, destination: entry.destination, ack: "auto", ...entry.headers };
    if (entry.offset !== null) {
      headers["x-stream-offset"] = `offset=${entry.offset + 1}`;
      headers["x-stream-epoch"] = entry.epoch;
    }
    return { ...headers, id, destination: entry.destination };
  }

  /** Hand a MESSAGE to its subscription's callback, once per stream offset. */
  _deliver(entry, frame) {
    const offset = frame.headers["x-stream-offset"];
    if (offset !== undefined && entry.destination.startsWith("/stream/")) {
      const n = Number(offset);
      const epoch = frame.headers["x-stream-epoch"];
      if (epoch === entry.epoch && entry.offset !== null && n <= entry.offset) return;
      entry.offset = n;
      entry.epoch = epoch;
    }
    entry.callback(frame);
  }

  /**
   * Send any frame. With a `receipt` header the Promise waits for the RECEIPT.
   * @returns {Promise<Frame|undefined>}
   */
  _transmit(command, headers = {}, body = "") {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new Error(`cannot send ${command}: not connected`));
    }
    let receipt;
    if (headers.receipt !== undefined && headers.receipt !== null) {
      receipt = new Promise((resolve, reject) => {
        this._receipts.set(String(headers.receipt), { resolve, reject });
      });
    }
    const { text, bytes } = encodeFrame(command, headers, body, this.version || "1.2");
    this.ws.send(text !== null ? text : bytes);
    if (this.onframe) {
      const binaryBody = typeof body === "string" ? encoder.encode(body) : new Uint8Array(body);
      const shown = typeof body === "string" ? body : decoder.decode(binaryBody);
      const sent = { ...headers };
      if (sent.passcode) sent.passcode = "********";
      if (binaryBody.length) sent["content-length"] = String(binaryBody.length);
      this.onframe("out", { command, headers: sent, body: shown, binaryBody });
    }
    return receipt || Promise.resolve(undefined);
  }

  /** A fresh id such as "sub-3" or "rcpt-4". */
  nextId(prefix = "id") {
    this._counter += 1;
    return `${prefix}-${this._counter}`;
  }

  /**
   * Send a message.
   * @param {string} destination e.g. "/queue/work" or "/topic/chat.lobby".
   * @param {string|Uint8Array|ArrayBuffer} [body]
   * @param {Object<string,string>} [headers] e.g. {"content-type": "application/json", receipt: "r1"}.
   * @returns {Promise<Frame|undefined>} resolves on RECEIPT if a receipt was asked for.
   */
  send(destination, body = "", headers = {}) {
    // destination is listed first (for readers of the frame log) and always wins.
    return this._transmit("SEND", { destination, ...headers, destination }, body);
  }

  /**
   * Subscribe; callback(message) gets each MESSAGE frame, which also has
   * message.ack() and message.nack() for client acknowledgement modes.
   * @param {string} destination
   * @param {(message: Frame) => void} callback
   * @param {Object<string,string>} [headers] e.g. {ack: "client-individual", "prefetch-count": "1"}.
   * @returns {{id: string, unsubscribe: (headers?: Object) => Promise, receipt: Promise}}
   */
  subscribe(destination, callback, headers = {}) {
    const id = headers.id !== undefined ? String(headers.id) : this.nextId("sub");
    const extra = { ...headers };
    delete extra.receipt; // a reconnect's SUBSCRIBE asks for no RECEIPT
    const entry = { destination, callback, headers: extra, offset: null, epoch: null };
    this._wanted.set(id, entry);
    this._subscriptions.set(id, (frame) => this._deliver(entry, frame));
    const all = { id, destination, ack: "auto", ...headers, id, destination };
    const receipt = this._transmit("SUBSCRIBE", all);
    return {
      id,
      receipt,
      unsubscribe: (more = {}) => {
        this._wanted.delete(id);
        this._subscriptions.delete(id);
        return this._transmit("UNSUBSCRIBE", { ...more, id });
      },
    };
  }

  /** Headers that name a message in ACK/NACK for the negotiated version. */
  _ackHeaders(message, headers) {
    const h = message.headers;
    if (this.version === "1.2") return { ...headers, id: h.ack };
    if (this.version === "1.1") {
      return { ...headers, "message-id": h["message-id"], subscription: h.subscription };
    }
    return { ...headers, "message-id": h["message-id"] };
  }

  /** Acknowledge a MESSAGE received on a client or client-individual subscription. */
  ack(message, headers = {}) {
    return this._transmit("ACK", this._ackHeaders(message, headers));
  }

  /** Refuse a MESSAGE (STOMP 1.1+); the broker may redeliver it. */
  nack(message, headers = {}) {
    return this._transmit("NACK", this._ackHeaders(message, headers));
  }

  /**
   * Send DISCONNECT with a receipt and close once the RECEIPT arrives (or the
   * socket closes, or after timeoutMs).
   * @returns {Promise<void>}
   */
  disconnect(timeoutMs = 5000) {
    this._stopped = true;
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    const ws = this.ws;
    if (!ws) return Promise.resolve();
    const closed = new Promise((resolve) => ws.addEventListener("close", () => resolve()));
    if (this.state !== "connected") {
      ws.close();
      return closed;
    }
    this._setState("disconnecting");
    const receipt = this._transmit("DISCONNECT", { receipt: this.nextId("disconnect") });
    const timeout = new Promise((resolve) => setTimeout(resolve, timeoutMs));
    return Promise.race([receipt.catch(() => {}), closed, timeout]).then(() => {
      if (ws.readyState !== WebSocket.CLOSED) ws.close(1000, "DISCONNECT");
      return closed;
    });
  }
}

// The console's table pages: queues and topics (with a destination's
// detail, purge and peek), connections (with close), durable subscriptions.

import { PagedTable } from "./table.js";
import { api, bytes, clock, el, fill, num } from "./util.js";

const rate = (v) => `${num(v)}/s`;
const byteRate = (v) => `${bytes(v)}/s`;

/** The queues and topics page. */
export class DestinationsPage {
  constructor(tableRoot, detailRoot) {
    this.detailRoot = detailRoot;
    this.selected = null;
    this.table = new PagedTable(tableRoot, {
      endpoint: "/api/console/destinations",
      sort: "name",
      kinds: [["", "All kinds"], ["queue", "Queues"], ["topic", "Topics"], ["stream", "Streams"]],
      rowId: (row) => row.name,
      empty: "No destination holds messages or has subscribers.",
      columns: [
        {
          key: "name",
          label: "Name",
          format: (name) =>
            el("a", { href: "#destinations", class: "dest-link", onclick: (e) => { e.preventDefault(); this.select(name); } }, name),
        },
        { key: "kind", label: "Kind" },
        { key: "depth", label: "Depth", numeric: true, format: num },
        { key: "unacked", label: "Unacked", numeric: true, format: num },
        { key: "consumers", label: "Consumers", numeric: true, format: num },
        { key: "rate_in", label: "In", numeric: true, format: rate },
        { key: "rate_out", label: "Out", numeric: true, format: rate },
        { key: "bytes_in_rate", label: "Bytes in", numeric: true, format: byteRate },
        { key: "bytes_out_rate", label: "Bytes out", numeric: true, format: byteRate },
        { key: "bytes", label: "Held", numeric: true, format: bytes },
      ],
    });
  }

  refresh() {
    this.table.refresh();
    if (this.selected) this.refreshDetail();
  }

  /** Show one destination's detail and actions. */
  select(name) {
    this.selected = name;
    this.detailRoot.hidden = false;
    this.info = el("dl", { class: "info" });
    this.subs = el("div", { class: "subs" });
    this.message = el("p", { class: "notice", role: "status" });
    this.peekCount = el("input", { type: "number", min: 1, max: 100, value: 10, class: "peek-count", "aria-label": "messages to peek at" });
    this.peeked = el("div", { class: "peeked" });
    const purge = el("button", { type: "button", class: "purge danger", onclick: () => this.askPurge(purge) }, "Purge…");
    fill(
      this.detailRoot,
      el("h2", {}, name, " ", el("button", { type: "button", class: "close-detail", onclick: () => this.unselect() }, "×")),
      this.info,
      el("div", { class: "actions" }, purge, el("span", { class: "confirm" }), " ", el("label", {}, "Peek at the first ", this.peekCount, " messages "),
        el("button", { type: "button", class: "peek", onclick: () => this.peek() }, "Peek")),
      this.message,
      this.peeked,
      el("h3", {}, "Subscriptions"),
      this.subs,
    );
    this.refreshDetail();
  }

  unselect() {
    this.selected = null;
    this.detailRoot.hidden = true;
    fill(this.detailRoot);
  }

  async refreshDetail() {
    const name = this.selected;
    let data;
    try {
      data = await api("GET", `/api/console/destination?name=${encodeURIComponent(name)}`);
    } catch (e) {
      if (name === this.selected) this.info.textContent = e.status === 404 ? "This destination no longer exists (nothing holds it)." : e.message;
      return;
    }
    if (name !== this.selected) return;
    const facts = [
      ["Kind", data.kind], ["Depth", num(data.depth)], ["Unacked", num(data.unacked)],
      ["Held", bytes(data.bytes)], ["Consumers", num(data.consumers)],
      ["In", `${rate(data.rate_in)} (${num(data.messages_in)} total)`],
      ["Out", `${rate(data.rate_out)} (${num(data.messages_out)} total)`],
    ];
    fill(this.info, facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-key": k.toLowerCase() }, v)]));
    const rows = data.subscriptions.map((s) =>
      el("tr", {}, el("td", {}, s.session_id || ""), el("td", {}, s.user || "–"), el("td", {}, s.peer || ""), el("td", {}, s.id),
        el("td", {}, s.ack), el("td", { class: "num" }, num(s.prefetch || 0)), el("td", { class: "num" }, num(s.unacked)),
        el("td", { class: "num" }, num(s.backlog)), el("td", {}, s.durable || "")),
    );
    for (const d of data.durable_subscriptions) {
      rows.push(el("tr", { class: "away" }, el("td", {}, "(away)"), el("td", {}, d.client_id), el("td", {}, ""), el("td", {}, ""),
        el("td", {}, ""), el("td", {}, ""), el("td", { class: "num" }, "0"), el("td", { class: "num" }, num(d.backlog)), el("td", {}, d.name)));
    }
    const head = ["Session", "User", "Peer", "Id", "Ack", "Prefetch", "Unacked", "Backlog", "Durable"];
    fill(this.subs, rows.length
      ? el("table", { class: "data" }, el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))), el("tbody", {}, rows))
      : el("p", { class: "muted" }, "No subscriptions."));
  }

  askPurge(button) {
    const name = this.selected;
    const slot = button.nextElementSibling;
    fill(slot, " ", el("button", { type: "button", class: "confirm-purge danger", onclick: () => this.purge(name, slot) }, `Really purge ${name}`),
      " ", el("button", { type: "button", onclick: () => fill(slot) }, "Cancel"));
  }

  async purge(name, slot) {
    fill(slot);
    try {
      const result = await api("DELETE", `/api/destinations/${encodeURIComponent(name)}/messages`);
      this.message.textContent = `Purged ${num(result.purged)} message(s) from ${name}.`;
    } catch (e) {
      this.message.textContent = `Purge failed: ${e.message}`;
    }
    this.refresh();
  }

  async peek() {
    const name = this.selected;
    const count = Math.max(1, Math.min(100, Number(this.peekCount.value) || 10));
    let data;
    try {
      data = await api("GET", `/api/destinations/${encodeURIComponent(name)}/messages?count=${count}`);
    } catch (e) {
      this.message.textContent = `Peek failed: ${e.message}`;
      return;
    }
    const items = data.messages.map((m, i) => {
      const headers = Object.entries(m.headers).map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v)));
      const size = `${bytes(m.body_size)}${m.body_truncated ? ", preview cut" : ""}${m.body_encoding === "base64" ? ", binary (base64)" : ""}`;
      return el("li", { class: "message" },
        el("div", { class: "message-id" }, `#${i + 1} ${m.message_id}`, m.redelivered ? " (redelivered)" : ""),
        el("table", { class: "headers" }, el("tbody", {}, headers)),
        el("div", { class: "muted" }, `body: ${size}`),
        el("pre", { class: "body" }, m.body));
    });
    fill(this.peeked,
      el("p", { class: "muted" }, `The first ${num(data.shown)} of ${num(data.waiting)} waiting (left in the queue).`),
      el("ol", { class: "messages" }, items));
  }
}

/** The connections page. */
export class ConnectionsPage {
  constructor(tableRoot) {
    this.panel = el("div", { class: "close-panel", hidden: true });
    const container = el("div");
    tableRoot.append(this.panel, container);
    this.table = new PagedTable(container, {
      endpoint: "/api/console/connections",
      placeholder: "Filter by user, address, session",
      sort: "since",
      kinds: [["", "All transports"], ["tcp", "TCP"], ["tls", "TLS"], ["ws", "WebSocket"]],
      rowId: (row) => row.session_id,
      empty: "No client is connected.",
      columns: [
        { key: "user", label: "User", format: (v) => v || "–" },
        { key: "peer", label: "Peer" },
        { key: "transport", label: "Transport" },
        { key: "version", label: "STOMP", format: (v) => v || "–" },
        { key: "heartbeat_send_ms", label: "Heart-beats", format: (v, r) => `${num(r.heartbeat_send_ms)} / ${num(r.heartbeat_receive_ms)} ms` },
        { key: "since", label: "Since", format: (v) => clock(v) },
        { key: "frames_in", label: "Frames in", numeric: true, format: num },
        { key: "frames_out", label: "Frames out", numeric: true, format: num },
        { key: "bytes_in", label: "Bytes in", numeric: true, format: bytes },
        { key: "bytes_out", label: "Bytes out", numeric: true, format: bytes },
        { key: "subscriptions", label: "Subs", numeric: true, format: num },
      ],
      actions: (row) => [el("button", { type: "button", class: "close-connection danger", onclick: () => this.ask(row) }, "Close…")],
    });
  }

  refresh() {
    this.table.refresh();
  }

  ask(row) {
    const reason = el("input", { class: "reason", placeholder: "reason (sent to the client)", maxlength: 200, value: "closed from the console" });
    const status = el("span", { class: "notice", role: "status" });
    this.panel.hidden = false;
    fill(this.panel,
      el("span", {}, `Close ${row.session_id} (${row.user || "anonymous"}, ${row.peer})? `), reason, " ",
      el("button", { type: "button", class: "confirm-close danger", onclick: () => this.close(row.session_id, reason.value, status) }, "Close connection"),
      " ", el("button", { type: "button", onclick: () => { this.panel.hidden = true; } }, "Cancel"), " ", status);
  }

  async close(id, reason, status) {
    try {
      await api("DELETE", `/api/connections/${encodeURIComponent(id)}?reason=${encodeURIComponent(reason)}`);
      status.textContent = `Closed ${id}.`;
    } catch (e) {
      status.textContent = `Close failed: ${e.message}`;
    }
    this.refresh();
  }
}

/** The durable subscriptions page. */
export class DurablesPage {
  constructor(tableRoot) {
    this.table = new PagedTable(tableRoot, {
      endpoint: "/api/console/durables",
      placeholder: "Filter by name, client id, topic",
      sort: "name",
      rowId: (row) => `${row.client_id}/${row.name}`,
      empty: "No durable subscriptions.",
      columns: [
        { key: "name", label: "Name" },
        { key: "client_id", label: "Client id" },
        { key: "destination", label: "Topic" },
        { key: "active", label: "State", format: (v) => (v ? "active" : "away") },
        { key: "session_id", label: "Session", format: (v) => v || "–" },
        { key: "backlog", label: "Backlog", numeric: true, format: num },
        { key: "unacked", label: "Unacked", numeric: true, format: num },
      ],
    });
  }

  refresh() {
    this.table.refresh();
  }
}

// The operator's console: logging in, the tabs, the overview's charts and
// the live updates (server-sent events from /api/events, one sample a
// second; polling /api/overview when the stream is refused).

import { LineChart } from "./chart.js";
import { ConnectionsPage, DestinationsPage, DurablesPage } from "./pages.js";
import { api, bytes, duration, el, fill, num, setCsrf } from "./util.js";

const $ = (id) => document.getElementById(id);
const state = { tab: "overview", pages: {}, charts: null, events: null, poll: null, overview: null };

// -- logging in -----------------------------------------------------------------------

async function start() {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", () => show(location.hash.slice(1)));
  const session = await api("GET", "/api/console/session");
  if (session.authenticated) enter(session);
  else showLogin(session.mode);
  window.consoleReady = true;
}

function showLogin(mode) {
  $("login").hidden = false;
  $("nav").hidden = true;
  $("who").hidden = true;
  for (const tab of document.querySelectorAll(".tab")) tab.hidden = true;
  const help = {
    users: "Log in as a broker user with the administrator tag (or leave the user empty and give the admin token).",
    token: "This broker has no users (no --auth): give the admin token (--admin-token-file).",
    disabled: "Logging in needs --auth with a user tagged administrator, or --admin-token-file.",
  }[mode];
  $("login-help").textContent = help || "";
  $("user-field").hidden = mode === "token";
  $("password-label").textContent = mode === "token" ? "Admin token" : "Password";
  $("login-submit").disabled = mode === "disabled";
  $("login-password").value = "";
}

async function login(event) {
  event.preventDefault();
  $("login-error").textContent = "";
  $("login-submit").disabled = true;
  try {
    const session = await api("POST", "/api/console/session", {
      user: $("user-field").hidden ? "" : $("login-user").value,
      password: $("login-password").value,
    });
    $("login-password").value = "";
    enter(session);
  } catch (e) {
    $("login-error").textContent = `Not logged in: ${e.message}`;
  } finally {
    $("login-submit").disabled = false;
  }
}

async function logout() {
  try {
    await api("DELETE", "/api/console/session");
  } finally {
    setCsrf(null);
    stopLive();
    showLogin((await api("GET", "/api/console/session")).mode);
  }
}

function enter(session) {
  setCsrf(session.csrf);
  $("login").hidden = true;
  $("nav").hidden = false;
  $("who").hidden = false;
  $("user").textContent = session.user;
  if (!state.charts) setUp();
  show(location.hash.slice(1) || "overview");
  startLive();
}

// -- tabs ---------------------------------------------------------------------------------

function setUp() {
  const rate = (v) => `${num(v)}/s`;
  state.charts = {
    rates: new LineChart($("chart-rates"), {
      format: rate,
      series: [
        { label: "publish", key: (p) => p.rates.published },
        { label: "deliver", key: (p) => p.rates.delivered },
        { label: "ack", key: (p) => p.rates.acked },
      ],
    }),
    connections: new LineChart($("chart-connections"), {
      format: num,
      series: [
        { label: "TCP", key: (p) => p.connections.tcp },
        { label: "TLS", key: (p) => p.connections.tls },
        { label: "WebSocket", key: (p) => p.connections.ws },
      ],
    }),
    memory: new LineChart($("chart-memory"), {
      format: bytes,
      series: [{ label: "used", key: (p) => (p.memory ? p.memory.used : null) }],
      limit: { label: "alarm at", value: (p) => (p.memory ? p.memory.limit : null) },
    }),
    commit: new LineChart($("chart-commit"), {
      format: (v) => `${num(v)} ms`,
      series: [{ label: "last commit", key: (p) => p.commit_ms }],
    }),
    dead: new LineChart($("chart-dead"), {
      format: num,
      series: [
        { label: "dead-lettered", key: (p) => p.totals.dead_lettered },
        { label: "expired", key: (p) => p.totals.expired },
      ],
    }),
  };
  state.pages = {
    destinations: new DestinationsPage($("destinations-table"), $("destination-detail")),
    connections: new ConnectionsPage($("connections-table")),
    durables: new DurablesPage($("durables-table")),
  };
}

function show(tab) {
  if (!state.charts) return;
  if (!["overview", "destinations", "connections", "durables"].includes(tab)) tab = "overview";
  state.tab = tab;
  for (const section of document.querySelectorAll(".tab")) section.hidden = section.id !== tab;
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("current", link.dataset.tab === tab);
  }
  if (tab === "overview") {
    for (const chart of Object.values(state.charts)) chart.draw();
  } else {
    state.pages[tab].refresh();
  }
}

// -- live updates ---------------------------------------------------------------------

async function startLive() {
  stopLive();
  await loadOverview();
  const events = new EventSource("/api/events");
  state.events = events;
  events.addEventListener("message", (event) => sample(JSON.parse(event.data)));
  events.addEventListener("open", () => $("live").classList.add("on"));
  events.addEventListener("error", () => {
    $("live").classList.remove("on");
    if (events.readyState === EventSource.CLOSED && state.events === events) {
      // Refused (too many streams): poll instead.
      state.events = null;
      state.poll = setInterval(loadOverview, 2000);
    }
  });
}

function stopLive() {
  if (state.events) state.events.close();
  if (state.poll) clearInterval(state.poll);
  state.events = state.poll = null;
  $("live").classList.remove("on");
}

async function loadOverview() {
  try {
    const overview = await api("GET", "/api/overview");
    state.overview = overview;
    for (const chart of Object.values(state.charts)) chart.setSamples(overview.history);
    facts(overview, overview.history[overview.history.length - 1]);
    if (state.poll) refreshTab();
  } catch (e) {
    $("facts").textContent = `Could not load the overview: ${e.message}`;
  }
}

function sample(point) {
  for (const chart of Object.values(state.charts)) chart.push(point);
  if (state.overview) {
    state.overview.uptime_seconds += state.overview.interval;
    facts(state.overview, point);
  }
  refreshTab();
}

function refreshTab() {
  if (state.tab !== "overview" && state.pages[state.tab]) state.pages[state.tab].refresh();
}

function facts(o, point) {
  const listeners = Object.entries(o.listeners)
    .filter(([, list]) => list.length)
    .map(([kind, list]) => `${kind} ${list.join(", ")}`);
  const store = `${o.store.kind} store`;
  $("facts").textContent =
    `stomptw ${o.version} · up ${duration(o.uptime_seconds)} · ${listeners.join(" · ")} · ${store}` +
    ` · ${o.auth ? "logins required" : "anonymous sessions"}`;
  const alarms = [];
  const memory = point ? point.memory : o.memory;
  const disk = point ? point.disk : o.disk;
  if (memory) alarms.push(el("span", { class: memory.active ? "alarm raised" : "alarm" }, `memory ${bytes(memory.used)} of ${bytes(memory.limit)}`));
  if (disk) alarms.push(el("span", { class: disk.active ? "alarm raised" : "alarm" }, `disk free ${bytes(disk.free)} (limit ${bytes(disk.limit)})`));
  fill($("alarms"), alarms);
  if (!point) return;
  const conns = point.connections;
  const tiles = [
    ["publish", `${num(point.rates.published)}/s`],
    ["deliver", `${num(point.rates.delivered)}/s`],
    ["ack", `${num(point.rates.acked)}/s`],
    ["connections", num(conns.tcp + conns.tls + conns.ws)],
    ["dead-lettered", num(point.totals.dead_lettered)],
    ["expired", num(point.totals.expired)],
  ];
  fill($("tiles"), tiles.map(([label, value]) => el("div", { class: "tile", "data-tile": label }, el("span", { class: "tile-value" }, value), el("span", { class: "tile-label" }, label))));
}

start().catch((e) => {
  $("login").hidden = false;
  $("login-error").textContent = `The console could not start: ${e.message}`;
});

// Small helpers shared by the console's modules: building elements (text
// only ever goes in as text nodes, never as HTML), formatting numbers, and
// the JSON API with the CSRF header.

let csrfToken = null;

/** Remember the session's CSRF token (sent with every API request). */
export function setCsrf(token) {
  csrfToken = token;
}

/** An API error: the HTTP status and the broker's message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/**
 * Call the admin API: `method` on `path` (with a JSON `body` if given).
 * Resolves with the answer's JSON; rejects with an ApiError.
 */
export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (csrfToken) headers["X-CSRF-Token"] = csrfToken;
  const init = { method, headers, credentials: "same-origin", cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = null;
  try {
    data = await response.json();
  } catch (e) {
    data = null;
  }
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.error) || `HTTP ${response.status}`);
  }
  return data;
}

/**
 * `el("td", {class: "num"}, "text", child)`: a new element. Attributes
 * starting with "on" are listeners; strings become text nodes.
 */
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Remove every child of `node`, then append `children`. */
export function fill(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** 1536 -> "1.5 KiB". */
export function bytes(value) {
  let v = Number(value) || 0;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i ? v.toFixed(1) : Math.round(v)} ${UNITS[i]}`;
}

/** A number with at most one decimal, thousands grouped. */
export function num(value) {
  const v = Number(value) || 0;
  return v.toLocaleString("en-US", { maximumFractionDigits: Number.isInteger(v) ? 0 : 1 });
}

/** Seconds -> "3d 4h", "5m 12s". */
export function duration(seconds) {
  let s = Math.max(0, Math.floor(Number(seconds) || 0));
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

/** Seconds since the epoch -> local "HH:MM:SS" (today) or date and time. */
export function clock(epochSeconds) {
  const date = new Date(epochSeconds * 1000);
  const today = new Date().toDateString() === date.toDateString();
  return today ? date.toLocaleTimeString("en-GB") : date.toLocaleString("en-GB");
}

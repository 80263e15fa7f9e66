// Logging in to a broker started with --auth: the pages keep the user's
// credentials (a password or a token) for this tab only, in sessionStorage,
// and pass them to CONNECT as login and passcode. Without --auth (config.js
// sets STOMPTW_AUTH to false) nothing here shows.

const KEY = "stomptw.credentials";

/** Whether the broker that served the page asks for a login. */
export const authRequired = Boolean(globalThis.STOMPTW_AUTH);

/** @returns {Object<string,string>} CONNECT headers with the stored credentials, if any. */
export function loginHeaders() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(KEY) || "null");
    if (saved && typeof saved.passcode === "string") {
      return saved.login ? { login: saved.login, passcode: saved.passcode } : { passcode: saved.passcode };
    }
  } catch (err) {
    sessionStorage.removeItem(KEY);
  }
  return {};
}

/** Whether credentials are stored for this tab. */
export function loggedIn() {
  return "passcode" in loginHeaders();
}

/** Forget the credentials and show the form again. */
export function logOut() {
  sessionStorage.removeItem(KEY);
  location.reload();
}

/**
 * Show the login form at the top of the page, with ``reason`` (why it is
 * shown: the broker's ERROR message, or that it needs a login). Submitting
 * it keeps the credentials for this tab and reloads the page.
 * @param {string} reason
 */
export function showLoginForm(reason) {
  if (document.getElementById("login")) return;
  const form = document.createElement("form");
  form.id = "login";
  form.className = "panel login";
  const note = document.createElement("p");
  note.id = "login-reason";
  note.className = "meta";
  note.textContent = reason;
  const user = labelled("login-user", "User", "text", "username");
  const pass = labelled("login-passcode", "Password or token", "password", "current-password");
  const button = document.createElement("button");
  button.type = "submit";
  button.id = "login-submit";
  button.textContent = "Log in";
  const row = document.createElement("div");
  row.className = "row";
  row.append(button);
  form.append(note, user.row, pass.row, row);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const credentials = { login: user.input.value.trim(), passcode: pass.input.value };
    sessionStorage.setItem(KEY, JSON.stringify(credentials));
    location.reload();
  });
  const main = document.querySelector("main") || document.body;
  const header = main.querySelector("header");
  if (header) header.after(form);
  else main.prepend(form);
  user.input.focus();
}

/**
 * Connect ``client`` with the stored credentials; when the broker needs a
 * login that is missing or refused, show the form (and rethrow).
 * @param {import("./stomp.js").StompClient} client
 */
export async function connectWithLogin(client) {
  if (authRequired && !loggedIn()) {
    showLoginForm("This broker needs a login: a user name and password, or a token as the password.");
    throw new Error("not logged in");
  }
  try {
    return await client.connect(loginHeaders());
  } catch (err) {
    if (authRequired) {
      sessionStorage.removeItem(KEY);
      showLoginForm(`The broker refused the login: ${err.message}`);
    }
    throw err;
  }
}

function labelled(id, text, type, autocomplete) {
  const row = document.createElement("div");
  row.className = "row";
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = text;
  const input = document.createElement("input");
  input.id = id;
  input.type = type;
  input.autocomplete = autocomplete;
  row.append(label, input);
  return { row, input };
}

// The panel's one way to the API: the session cookie (same origin only), the CSRF header on
// every change, JSON both ways. Invariant: no secret is kept here — the browser holds the
// session in an HttpOnly cookie that this code can neither read nor send elsewhere.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }

  // The API's own words, verbatim, with the status and code in front.
  get shown() {
    return this.status ? `${this.status} ${this.code || "error"}: ${this.message}` : this.message;
  }
}

// Polls stop once the user has done nothing for this long (or the tab is hidden), so that an
// open but forgotten panel lets its session reach the server's idle lifetime.
export const POLL_IDLE_LIMIT_MS = 10 * 60 * 1000;
let lastInput = Date.now();
for (const event of ["keydown", "pointerdown", "wheel", "touchstart"]) {
  window.addEventListener(event, () => { lastInput = Date.now(); }, {passive: true, capture: true});
}
export function pollPaused() {
  return document.hidden || Date.now() - lastInput > POLL_IDLE_LIMIT_MS;
}

const signedOut = [];
export function onSignedOut(listener) {
  signedOut.push(listener);
}

// Paths are relative to the page, so the panel works under any prefix a reverse proxy gives it.
export async function api(method, path, body) {
  const init = {method, credentials: "same-origin", cache: "no-store", redirect: "error",
                headers: {Accept: "application/json"}};
  if (method !== "GET" && method !== "HEAD") init.headers["X-LWP-Request"] = "1";
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(new URL(path, window.location.href), init);
  } catch {
    throw new ApiError(0, "network", "the panel's server cannot be reached");
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data && typeof data.code === "string" ? data.code : "",
                               data && typeof data.error === "string" ? data.error : `HTTP ${response.status}`);
    if (response.status === 401 && path !== "api/v1/session") signedOut.forEach((l) => l(error));
    throw error;
  }
  return data;
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== "" && value !== null && value !== undefined) search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

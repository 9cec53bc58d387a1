// The panel's entry: sign-in, the session's user and scope, navigation between pages by the
// URL's fragment (so the panel works under any path prefix), and the one result line.
import {h, fill, field, on} from "./dom.js";
import {api, onSignedOut} from "./api.js";
import {allows} from "./actions.js";
import {overview} from "./overview.js";
import {containerPage} from "./container.js";
import {createPage} from "./create.js";
import {tokensPage} from "./tokens.js";
import {auditPage} from "./audit.js";

const main = document.getElementById("main");
const result = document.getElementById("result");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
// The scope is no secret (the API enforces it); kept for a reload only in case the server
// cannot say who is signed in.
const REMEMBERED = "lwp-session-scope";
let current = null;

// kind -> the word that says it, so a result never depends on its colour.
const KIND = {ok: "Done", error: "Error", info: "Note", busy: "Working"};

const ctx = {
  session: null,
  go(hash) { window.location.hash = hash; },
  report(message, kind = "info") {
    fill(result, h("strong", {class: `kind-${kind}`}, `${KIND[kind]}:`), " ", h("span", {class: "message"}, message));
  },
  busy(message) { ctx.report(message, "busy"); },
};

// fragment pattern, page, scope it needs
const ROUTES = [
  [/^#?\/?$/, () => overview(ctx), "read"],
  [/^#\/containers\/([^/]+)$/, (m) => containerPage(ctx, decodeURIComponent(m[1])), "read"],
  [/^#\/new$/, () => createPage(ctx), "admin"],
  [/^#\/tokens$/, () => tokensPage(ctx), "admin"],
  [/^#\/audit$/, () => auditPage(ctx), "admin"],
];

function show(page) {
  if (current) current.stop();
  current = page;
  fill(main, page.node);
  const heading = main.querySelector("h1");
  document.title = `${heading ? heading.textContent : ""} — LXC Web Panel`;
  if (heading) heading.focus();
}

function route() {
  if (!ctx.session) return;
  const hash = window.location.hash;
  if (hash && !hash.startsWith("#/")) return; // an in-page anchor, not a page
  for (const [pattern, make, scope] of ROUTES) {
    const match = pattern.exec(hash);
    if (!match) continue;
    if (!allows(ctx.session, scope)) {
      show({node: h("section", {}, h("h1", {tabindex: "-1"}, "Not allowed"),
        h("p", {}, `This page needs the ${scope} scope; you have ${ctx.session.scope}.`)), stop() {}});
    } else {
      show(make(match));
    }
    for (const link of nav.querySelectorAll("a")) {
      link.toggleAttribute("aria-current", false);
      if (pattern.test(link.getAttribute("href"))) link.setAttribute("aria-current", "page");
    }
    return;
  }
  show({node: h("section", {}, h("h1", {tabindex: "-1"}, "No such page"),
    h("p", {}, h("a", {href: "#/"}, "All containers"))), stop() {}});
}

function signedIn(session) {
  ctx.session = session;
  window.sessionStorage.setItem(REMEMBERED, session.scope);
  fill(document.getElementById("who-name"), `${session.user || "token"} (${session.scope})`);
  for (const item of nav.querySelectorAll("[data-scope]")) item.hidden = !allows(session, item.dataset.scope);
  nav.hidden = false;
  who.hidden = false;
  route();
}

function signInPage(message) {
  ctx.session = null;
  nav.hidden = true;
  who.hidden = true;
  const username = h("input", {name: "username", type: "text", autocomplete: "username", required: true});
  const password = h("input", {name: "password", type: "password", autocomplete: "current-password", required: true});
  const token = h("input", {name: "token", type: "password", autocomplete: "off", required: true});
  const account = h("form", {id: "sign-in-account", "aria-labelledby": "account-title"},
    h("h2", {id: "account-title"}, "With a host account"),
    field("User name", username), field("Password", password),
    h("div", {class: "buttons"}, h("button", {type: "submit"}, "Sign in")));
  const pasted = h("form", {id: "sign-in-token", "aria-labelledby": "token-title"},
    h("h2", {id: "token-title"}, "Or with an API token"),
    field("Token", token, "It is exchanged for a session; the page does not keep it."),
    h("div", {class: "buttons"}, h("button", {type: "submit"}, "Sign in with token")));
  const submit = (form, body, clear) => on(form, "submit", async (event) => {
    event.preventDefault();
    const sent = body();
    clear.forEach((input) => { input.value = ""; }); // no secret stays in the DOM
    try {
      const reply = await api("POST", "api/v1/session", sent);
      ctx.report("signed in", "ok");
      signedIn(await whoami(reply || {}));
    } catch (error) {
      ctx.report(`sign in: ${error.shown || error.message}`, "error");
    }
  });
  submit(account, () => ({username: username.value, password: password.value}), [password]);
  submit(pasted, () => ({token: token.value.trim()}), [token]);
  if (current) current.stop();
  current = null;
  if (message) ctx.report(message, "info");
  fill(main, h("section", {"aria-labelledby": "sign-in-title", class: "sign-in"},
    h("h1", {id: "sign-in-title", tabindex: "-1"}, "Sign in"), account, pasted));
  document.title = "Sign in — LXC Web Panel";
}

// Who is signed in, as the server says; `fallback` (the sign-in reply, or what was
// remembered) only if the server has no such call.
async function whoami(fallback) {
  try {
    const me = await api("GET", "api/v1/session");
    return {user: me.user || me.username || null, scope: me.scope};
  } catch (error) {
    if ((error.status === 404 || error.status === 405) && fallback && fallback.scope) {
      return {user: fallback.user || fallback.username || null, scope: fallback.scope};
    }
    throw error;
  }
}

on(document.getElementById("sign-out"), "click", async () => {
  try {
    await api("DELETE", "api/v1/session");
    signInPage("Signed out.");
  } catch (error) {
    ctx.report(`sign out: ${error.shown || error.message}`, "error");
  }
});
onSignedOut(() => signInPage("Your session has ended: sign in again."));
window.addEventListener("hashchange", route);

whoami({scope: window.sessionStorage.getItem(REMEMBERED)})
  .then(signedIn)
  .catch((error) => signInPage(error.status === 401 ? "" : `The panel cannot reach its server: ${error.shown || error.message}`));

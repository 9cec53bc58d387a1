// API tokens (admin): list, create (the new secret is shown once, with a copy button), revoke.
// The secret lives in this page's DOM only until the admin leaves the page; it is never stored.
import {h, fill, field, select, on, button} from "./dom.js";
import {api} from "./api.js";
import {confirmDialog} from "./actions.js";

const COLUMNS = ["Id", "Description", "Scope", "Created (UTC)", "Expires (UTC)", "Last used (UTC)", ""];

function when(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const date = new Date(Number(seconds) * 1000);
  return Number.isNaN(date.getTime()) ? String(seconds) : date.toISOString().replace("T", " ").slice(0, 19);
}

export function tokensPage(ctx) {
  const body = h("tbody", {});
  const secretBox = h("div", {class: "secret", hidden: true, role: "region", "aria-label": "New token"});

  async function load() {
    try {
      const list = await api("GET", "api/v1/tokens");
      fill(body, list.map((t) => h("tr", {"data-id": t.id},
        h("td", {}, String(t.id)), h("td", {}, String(t.description || "")), h("td", {}, String(t.scope)),
        h("td", {}, when(t.created)), h("td", {}, when(t.expires)), h("td", {}, when(t.last_used)),
        h("td", {}, button("Revoke…", () => revoke(t), {"aria-label": `Revoke token ${t.id}`})))));
    } catch (error) {
      ctx.report(`tokens: ${error.shown || error.message}`, "error");
    }
  }

  async function revoke(token) {
    const label = token.description ? `${token.id} (${token.description})` : String(token.id);
    const sure = await confirmDialog(`Revoke token ${label}?`,
      ["Every client using it is refused from now on."], `Revoke token ${token.id}`);
    if (!sure) return;
    try {
      await api("DELETE", `api/v1/tokens/id/${encodeURIComponent(token.id)}`);
      ctx.report(`revoke token ${token.id}: ok`, "ok");
    } catch (error) {
      ctx.report(`revoke token ${token.id}: ${error.shown || error.message}`, "error");
    }
    load();
  }

  function showSecret(id, secret) {
    const code = h("code", {id: "new-secret"}, secret);
    const copied = h("span", {role: "status"});
    fill(secretBox,
      h("p", {}, `Token ${id} was created. Its secret is shown only this once: copy it now.`),
      h("p", {}, code, " ", button("Copy", async () => {
        try {
          await navigator.clipboard.writeText(secret);
          fill(copied, "Copied.");
        } catch {
          window.getSelection().selectAllChildren(code); // the user copies by hand
          fill(copied, "Selected: press Ctrl+C to copy.");
        }
      }, {id: "copy-secret"}), " ", copied));
    secretBox.hidden = false;
    // Where the admin is: the form is below the list, the secret above it.
    secretBox.scrollIntoView({block: "center"});
    document.getElementById("copy-secret").focus();
  }

  const description = h("input", {name: "description", type: "text", maxlength: "256", autocomplete: "off"});
  const scopes = ["read", "operate", "admin"].filter((s) => s !== "admin" || ctx.session.scope === "admin");
  const scope = select("scope", scopes.map((s) => [s, s]), "read");
  const expires = h("input", {name: "expires", type: "date"});
  const form = h("form", {id: "token-form", "aria-labelledby": "token-new-title"},
    h("h2", {id: "token-new-title"}, "New token"),
    field("Description", description), field("Scope", scope),
    field("Expires (end of that day, UTC)", expires, "Empty: never"),
    h("div", {class: "buttons"}, h("button", {type: "submit"}, "Create token")));
  on(form, "submit", async (event) => {
    event.preventDefault();
    const wanted = {description: description.value, scope: scope.value};
    if (expires.value) wanted.expires = Date.parse(`${expires.value}T23:59:59Z`) / 1000;
    try {
      const reply = await api("POST", "api/v1/tokens", wanted);
      ctx.report(`create token: ok, id ${reply.id}`, "ok");
      showSecret(reply.id, reply.token);
      form.reset();
      load();
    } catch (error) {
      ctx.report(`create token: ${error.shown || error.message}`, "error");
    }
  });
  load();
  return {node: h("section", {"aria-labelledby": "tokens-title"},
    h("h1", {id: "tokens-title", tabindex: "-1"}, "API tokens"), secretBox,
    h("div", {class: "table-wrap"}, h("table", {id: "tokens"},
      h("caption", {class: "visually-hidden"}, "Tokens"),
      h("thead", {}, h("tr", {}, COLUMNS.map((c) => h("th", {scope: "col"}, c || h("span", {class: "visually-hidden"}, "Actions"))))), body)),
    form),
  stop() { fill(secretBox); }};
}

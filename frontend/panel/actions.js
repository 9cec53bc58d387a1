// What may be done to a container, as tables: by its state and by the session's scope. A button
// is offered only when both allow it; the API checks both again whatever the page offers.
import {h, fill, button, uid} from "./dom.js";
import {api} from "./api.js";

export const RANK = {read: 1, operate: 2, admin: 3};

export function allows(session, scope) {
  return Boolean(session) && (RANK[session.scope] || 0) >= RANK[scope];
}

// state -> the actions it allows, in the order they are shown.
const BY_STATE = {
  stopped: ["start", "destroy"],
  running: ["stop", "restart", "freeze", "destroy"],
  frozen: ["unfreeze", "stop", "restart", "destroy"],
};
// action -> [button text, scope it needs]
const ACTION = {
  start: ["Start", "operate"],
  stop: ["Stop", "operate"],
  restart: ["Restart", "operate"],
  freeze: ["Freeze", "operate"],
  unfreeze: ["Unfreeze", "operate"],
  destroy: ["Destroy…", "admin"],
};

export function offered(session, state) {
  return (BY_STATE[String(state).toLowerCase()] || []).filter((a) => allows(session, ACTION[a][1]));
}

// A modal question naming the container; resolves true only on the explicit confirm button.
export function confirmDialog(title, lines, confirmText) {
  return new Promise((resolve) => {
    const titleId = uid("dialog-title");
    const cancel = h("button", {type: "button"}, "Cancel");
    const yes = h("button", {type: "button", class: "danger"}, confirmText);
    const dialog = h("dialog", {"aria-labelledby": titleId},
      h("h2", {id: titleId}, title), lines.map((line) => h("p", {}, line)),
      h("div", {class: "buttons"}, yes, cancel));
    const close = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    yes.addEventListener("click", () => close(true));
    cancel.addEventListener("click", () => close(false));
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault();
      close(false);
    });
    document.body.append(dialog);
    dialog.showModal();
    cancel.focus(); // the safe answer is the default one
  });
}

async function perform(name, action, state) {
  if (action !== "destroy") {
    await api("POST", `api/v1/containers/${encodeURIComponent(name)}`, {action});
    return false;
  }
  const running = String(state).toLowerCase() !== "stopped";
  const lines = ["Its root file system and configuration are deleted. This cannot be undone."];
  if (running) lines.push(`${name} is ${String(state).toLowerCase()}: it will be stopped first (force).`);
  const sure = await confirmDialog(`Destroy container ${name}?`, lines, `Destroy ${name}`);
  if (!sure) return null;
  await api("DELETE", `api/v1/containers/${encodeURIComponent(name)}${running ? "?force=true" : ""}`);
  return true;
}

// The buttons for one container into `cell`; `done(action, destroyed)` runs after each result.
export function renderActions(cell, ctx, name, state, done) {
  const names = offered(ctx.session, state);
  const focused = cell.contains(document.activeElement) ? document.activeElement.dataset.action : null;
  fill(cell, names.map((action) => button(ACTION[action][0], async (event) => {
    const target = event.currentTarget;
    target.disabled = true;
    ctx.busy(`${action} ${name}: working…`);
    try {
      const destroyed = await perform(name, action, state);
      if (destroyed === null) {
        ctx.report(`${action} ${name}: cancelled`, "info");
      } else {
        ctx.report(`${action} ${name}: ok`, "ok");
      }
      done(action, Boolean(destroyed));
    } catch (error) {
      ctx.report(`${action} ${name}: ${error.shown || error.message}`, "error");
      done(action, false);
    } finally {
      target.disabled = false;
    }
  }, {"data-action": action, "aria-label": `${ACTION[action][0].replace("…", "")} ${name}`})));
  if (focused) {
    // The same action if the new state still offers it, else the first one that is offered.
    const again = cell.querySelector(`[data-action="${focused}"]`) || cell.querySelector("button");
    if (again) again.focus();
  }
  return names;
}

export function stateLabel(state) {
  const word = String(state || "unknown").toLowerCase();
  // A sign and the word: the state never depends on colour alone.
  const sign = {running: "▶", stopped: "■", frozen: "❄"}[word] || "?";
  return h("span", {class: `state state-${word}`}, h("span", {"aria-hidden": "true"}, sign + " "), word);
}

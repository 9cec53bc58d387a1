// One container: the seed's info fields, polled in place, its actions, and (for an admin) its
// audit records.
import {h, fill, setText} from "./dom.js";
import {api, pollPaused} from "./api.js";
import {allows, renderActions, stateLabel} from "./actions.js";
import {auditTable} from "./audit.js";
import {POLL_MS} from "./overview.js";

// The info object's fields, in the seed's order, with their labels.
const FIELDS = [
  ["state", "State"], ["pid", "PID"], ["ip", "IPv4"], ["link", "Link"],
  ["cpu_use", "CPU time"], ["memory_use", "Memory"], ["kmem_use", "Kernel memory"],
  ["blkio_use", "Block I/O"], ["rx_bytes", "Received"], ["tx_bytes", "Sent"],
  ["total_bytes", "Total traffic"],
];

export function containerPage(ctx, name) {
  const values = new Map(FIELDS.map(([key]) => [key, h("dd", {})]));
  const list = h("dl", {class: "info"}, FIELDS.map(([key, label]) => [h("dt", {}, label), values.get(key)]));
  const actions = h("div", {class: "actions", role: "group", "aria-label": `Actions on ${name}`});
  const updated = h("p", {class: "hint"});
  let state = null;
  let timer = null;
  let stopped = false;

  async function refresh() {
    clearTimeout(timer);
    if (state !== null && pollPaused()) {
      setText(updated, "Paused while you are away: press any key or click to resume.");
      timer = setTimeout(refresh, POLL_MS / 3);
      return;
    }
    try {
      const info = await api("GET", `api/v1/containers/${encodeURIComponent(name)}`);
      if (stopped) return;
      const now = String(info.state).toLowerCase();
      if (now !== state) {
        if (state !== null && audit) audit.reload(); // a change was made: its records are new
        state = now;
        fill(values.get("state"), stateLabel(now));
        renderActions(actions, ctx, name, now, (action, destroyed) => {
          if (destroyed) ctx.go("#/");
          else refresh();
        });
      }
      for (const [key] of FIELDS.slice(1)) setText(values.get(key), info[key] === undefined || info[key] === null ? "—" : info[key]);
      setText(updated, `Updated ${new Date().toLocaleTimeString()}`);
    } catch (error) {
      if (error.status !== 401) setText(updated, `Not updated: ${error.shown || error.message}`);
    }
    if (!stopped) timer = setTimeout(refresh, POLL_MS);
  }

  const parts = [
    h("p", {}, h("a", {href: "#/"}, "← All containers")),
    h("h1", {id: "container-title", tabindex: "-1"}, "Container ", h("code", {}, name)),
    list, actions, updated,
  ];
  let audit = null;
  if (allows(ctx.session, "admin")) {
    audit = auditTable(ctx, {container: name, limit: 20}, "Audit records of this container");
    parts.push(audit.node);
  }
  refresh();
  return {node: h("section", {"aria-labelledby": "container-title"}, parts),
          stop() { stopped = true; clearTimeout(timer); }};
}

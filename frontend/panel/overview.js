// The overview: every container with its state, IPv4, memory and CPU time, filterable by state,
// with counts; polled in place (rows are kept and only changed text is rewritten), so a poll
// moves neither the scroll position nor the keyboard focus.
import {h, fill, setText, field, select, on} from "./dom.js";
import {api, pollPaused} from "./api.js";
import {renderActions, stateLabel} from "./actions.js";

export const POLL_MS = 3000;
const STATES = ["running", "frozen", "stopped"];
const INFO_AT_ONCE = 4; // info requests in flight at most, per poll

export function overview(ctx) {
  const counts = h("p", {id: "counts"});
  const filter = select("state", [["", "All states"], ...STATES.map((s) => [s, s])], "");
  filter.id = "state-filter";
  const body = h("tbody", {});
  const table = h("table", {id: "containers"},
    h("caption", {class: "visually-hidden"}, "Containers"),
    h("thead", {}, h("tr", {}, ["Name", "State", "IPv4", "Memory", "CPU time", "Actions"]
      .map((title) => h("th", {scope: "col"}, title)))),
    body);
  const empty = h("p", {hidden: true}, "No containers yet.");
  const rows = new Map(); // name -> {tr, state, cells}
  let timer = null;
  let stopped = false;

  function applyFilter() {
    for (const row of rows.values()) row.tr.hidden = Boolean(filter.value) && row.state !== filter.value;
    showCounts();
  }
  on(filter, "change", applyFilter);

  function showCounts() {
    const tally = Object.fromEntries(STATES.map((s) => [s, 0]));
    for (const row of rows.values()) tally[row.state] = (tally[row.state] || 0) + 1;
    const parts = Object.entries(tally).map(([state, n]) => `${n} ${state}`);
    const shown = [...rows.values()].filter((r) => !r.tr.hidden).length;
    setText(counts, `${rows.size} containers: ${parts.join(", ")}` +
      (filter.value ? ` — showing ${shown} ${filter.value}` : ""));
    for (const option of filter.options) {
      setText(option, option.value ? `${option.value} (${tally[option.value] || 0})` : `All states (${rows.size})`);
    }
    empty.hidden = rows.size > 0;
  }

  function newRow(name) {
    const cells = {state: h("td", {}), ip: h("td", {}), memory: h("td", {}), cpu: h("td", {}),
                   actions: h("td", {class: "actions"})};
    const link = h("a", {href: `#/containers/${encodeURIComponent(name)}`}, name);
    const tr = h("tr", {"data-name": name}, h("th", {scope: "row"}, link),
      cells.state, cells.ip, cells.memory, cells.cpu, cells.actions);
    return {tr, cells, state: null};
  }

  function updateRow(row, name, state) {
    if (row.state !== state) {
      row.state = state;
      fill(row.cells.state, stateLabel(state));
      renderActions(row.cells.actions, ctx, name, state, () => refresh());
      if (state === "stopped") for (const key of ["ip", "memory", "cpu"]) setText(row.cells[key], "—");
    }
  }

  async function details(names) {
    const queue = [...names];
    const worker = async () => {
      while (queue.length && !stopped) {
        const name = queue.shift();
        const row = rows.get(name);
        try {
          const info = await api("GET", `api/v1/containers/${encodeURIComponent(name)}`);
          if (!row || rows.get(name) !== row || info.state === "STOPPED") continue;
          setText(row.cells.ip, info.ip || "—");
          setText(row.cells.memory, info.memory_use || "—");
          setText(row.cells.cpu, info.cpu_use || "—");
        } catch {
          // a container that went away between list and info: the next poll drops its row
        }
      }
    };
    await Promise.all(Array.from({length: INFO_AT_ONCE}, worker));
  }

  async function refresh() {
    clearTimeout(timer);
    if (rows.size && pollPaused()) {
      setText(updated, "Paused while you are away: press any key or click to resume.");
      timer = setTimeout(refresh, POLL_MS / 3);
      return;
    }
    try {
      const list = await api("GET", "api/v1/containers");
      if (stopped) return;
      const items = list.map((item) => [String(item.container), String(item.state).toLowerCase()]);
      const seen = new Set(items.map(([name]) => name));
      for (const [name, row] of rows) {
        if (!seen.has(name)) {
          row.tr.remove();
          rows.delete(name);
        }
      }
      // Back to front, so the row a new one goes before is already in place (the list is
      // sorted by name); rows that stay are never moved, which would drop the focus.
      for (let i = items.length - 1; i >= 0; i -= 1) {
        const [name, state] = items[i];
        let row = rows.get(name);
        if (!row) {
          row = newRow(name);
          rows.set(name, row);
          body.insertBefore(row.tr, i + 1 < items.length ? rows.get(items[i + 1][0]).tr : null);
        }
        updateRow(row, name, state);
      }
      applyFilter();
      await details(list.filter((i) => String(i.state).toLowerCase() !== "stopped").map((i) => String(i.container)));
      setText(updated, `Updated ${new Date().toLocaleTimeString()}`);
    } catch (error) {
      if (error.status !== 401) setText(updated, `Not updated: ${error.shown || error.message}`);
    }
    if (!stopped) timer = setTimeout(refresh, POLL_MS);
  }

  const updated = h("p", {class: "hint", id: "updated"});
  const node = h("section", {"aria-labelledby": "overview-title"},
    h("h1", {id: "overview-title", tabindex: "-1"}, "Containers"),
    h("div", {class: "toolbar"}, field("Show", filter), counts),
    empty, h("div", {class: "table-wrap"}, table), updated);
  refresh();
  return {node, stop() { stopped = true; clearTimeout(timer); }};
}

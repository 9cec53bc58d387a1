// The audit trail as tables: the API's filters and cursor paging. Every record's field is shown
// as text — actors' descriptions and errors are client input and may hold markup.
import {h, fill, field, select, on} from "./dom.js";
import {api, query} from "./api.js";

const OUTCOMES = ["ok", "denied", "invalid", "error", "timeout", "interrupted"];
const COLUMNS = ["Seq", "Time (UTC)", "Actor", "Client", "Operation", "Container", "Outcome", "Error", "Phase"];

function text(value) {
  if (value === null || value === undefined) return "—";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

function actor(value) {
  if (!value) return "no valid token";
  const who = [];
  if (value.user) who.push(String(value.user));
  if (value.token_id !== undefined && value.token_id !== null) who.push(`#${value.token_id}`);
  if (value.description) who.push(String(value.description));
  if (value.scope) who.push(`(${value.scope})`);
  return who.join(" ");
}

function errorText(value) {
  if (value && typeof value === "object" && "message" in value) {
    return `${value.code ? `${value.code}: ` : ""}${value.message}`;
  }
  return text(value);
}

function recordRow(record) {
  const count = record.summary && record.summary.count ? ` ×${record.summary.count}` : "";
  return h("tr", {}, h("td", {}, text(record.seq)), h("td", {}, text(record.ts)),
    h("td", {}, actor(record.actor)), h("td", {}, text(record.client)), h("td", {}, text(record.op)),
    h("td", {}, text(record.container)), h("td", {}, text(record.outcome)),
    h("td", {}, errorText(record.error)), h("td", {}, text(record.phase) + count));
}

// A table of records with First/Previous/Next paging over the API's cursor.
export function auditTable(ctx, filters, title) {
  const body = h("tbody", {});
  const status = h("p", {class: "hint", role: "status"});
  const previous = h("button", {type: "button", disabled: true}, "Previous page");
  const next = h("button", {type: "button", disabled: true}, "Next page");
  const cursors = [null]; // cursors[i]: the cursor that fetched page i
  let page = 0;
  let wanted = {...filters};
  let nextCursor = null;
  const titleId = `audit-${Math.random().toString(36).slice(2)}`;

  async function load() {
    try {
      const reply = await api("GET", `api/v1/audit${query({...wanted, cursor: cursors[page]})}`);
      fill(body, reply.records.map(recordRow));
      nextCursor = reply.next_cursor;
      fill(status, reply.records.length ? `Page ${page + 1}: ${reply.records.length} records` : "No records match.");
    } catch (error) {
      fill(body);
      nextCursor = null;
      fill(status, `Audit: ${error.shown || error.message}`);
    }
    previous.disabled = page === 0;
    next.disabled = nextCursor === null || nextCursor === undefined;
  }
  on(next, "click", () => {
    cursors[page + 1] = nextCursor;
    page += 1;
    load();
  });
  on(previous, "click", () => {
    page = Math.max(0, page - 1);
    load();
  });
  const node = h("section", {"aria-labelledby": titleId, class: "audit"},
    h("h2", {id: titleId}, title),
    h("div", {class: "table-wrap"}, h("table", {},
      h("thead", {}, h("tr", {}, COLUMNS.map((c) => h("th", {scope: "col"}, c)))), body)),
    status, h("div", {class: "buttons"}, previous, next));
  load();
  return {node, reload: load,
          search(values) { wanted = values; cursors.length = 1; page = 0; load(); }};
}

export function auditPage(ctx) {
  const inputs = {
    since: h("input", {name: "since", type: "text", placeholder: "2024-05-01 or 2024-05-01T12:00Z"}),
    until: h("input", {name: "until", type: "text"}),
    container: h("input", {name: "container", type: "text", autocomplete: "off"}),
    actor: h("input", {name: "actor", type: "text", autocomplete: "off"}),
    op: h("input", {name: "op", type: "text", placeholder: "e.g. start_container"}),
    outcome: select("outcome", [["", "any"], ...OUTCOMES.map((o) => [o, o])], ""),
    limit: h("input", {name: "limit", type: "number", min: "1", max: "500", value: "50"}),
  };
  const values = () => Object.fromEntries(Object.entries(inputs).map(([k, input]) => [k, input.value.trim()]));
  const form = h("form", {class: "filters", "aria-label": "Audit filters"},
    field("Since", inputs.since), field("Until", inputs.until), field("Container", inputs.container),
    field("Actor (token id or description)", inputs.actor), field("Operation", inputs.op),
    field("Outcome", inputs.outcome), field("Records per page", inputs.limit),
    h("div", {class: "buttons"}, h("button", {type: "submit"}, "Search")));
  const table = auditTable(ctx, values(), "Records");
  on(form, "submit", (event) => {
    event.preventDefault();
    table.search(values());
  });
  return {node: h("section", {"aria-labelledby": "audit-title"},
    h("h1", {id: "audit-title", tabindex: "-1"}, "Audit trail"), form, table.node), stop() {}};
}

// Create from an allowed template, or clone: the choices come from GET api/v1/templates, and a
// create that runs for minutes shows that it is running and for how long.
import {h, fill, field, select, on, setText} from "./dom.js";
import {api} from "./api.js";

const NAME_PATTERN = "[A-Za-z0-9][A-Za-z0-9_.\\-]{0,63}";

function nameInput() {
  return h("input", {name: "name", type: "text", required: true, pattern: NAME_PATTERN,
                     maxlength: "64", autocomplete: "off", spellcheck: "false"});
}

// Runs `work` with the form disabled, a progress bar and the seconds elapsed.
async function withProgress(ctx, form, progress, what, work) {
  const controls = [...form.elements];
  controls.forEach((c) => { c.disabled = true; });
  const started = Date.now();
  const bar = h("progress", {"aria-label": what});
  const line = h("span", {}, `${what}: 0 s`);
  fill(progress, bar, " ", line);
  progress.hidden = false;
  form.setAttribute("aria-busy", "true");
  const tick = setInterval(() => setText(line, `${what}: ${Math.round((Date.now() - started) / 1000)} s`), 1000);
  try {
    await work();
    return true;
  } catch (error) {
    ctx.report(`${what}: ${error.shown || error.message}`, "error");
    return false;
  } finally {
    clearInterval(tick);
    progress.hidden = true;
    form.removeAttribute("aria-busy");
    controls.forEach((c) => { c.disabled = false; });
  }
}

function createForm(ctx, catalogue) {
  const name = nameInput();
  const templates = catalogue.templates.map((t) => [t.name, t.name]);
  const template = select("template", templates, templates.length ? templates[0][0] : "");
  const store = select("store", catalogue.stores.map((s) => [s, s]), catalogue.stores[0]);
  const options = h("fieldset", {class: "options"});
  const progress = h("p", {class: "progress", role: "status", hidden: true});
  const inputs = new Map();

  function showOptions() {
    inputs.clear();
    const chosen = catalogue.templates.find((t) => t.name === template.value);
    const allowed = chosen ? chosen.options : [];
    fill(options, h("legend", {}, allowed.length ? `Options of ${template.value}` : `${template.value || "This template"} takes no options`),
      allowed.map((option) => {
        const input = option.values
          ? select(option.name, [["", "(default)"], ...option.values.map((v) => [v, v])], "")
          : h("input", {name: option.name, type: "text", autocomplete: "off"});
        inputs.set(option.name, input);
        return field(`--${option.name}`, input);
      }));
  }
  on(template, "change", showOptions);
  showOptions();

  const form = h("form", {id: "create-form", "aria-labelledby": "create-title"},
    h("h2", {id: "create-title"}, "Create from a template"),
    field("Name", name, "Letters, digits, _ . - ; at most 64"), field("Template", template),
    field("Store", store), options,
    h("div", {class: "buttons"}, h("button", {type: "submit"}, "Create")), progress);
  on(form, "submit", async (event) => {
    event.preventDefault();
    const xargs = [...inputs].filter(([, input]) => input.value.trim() !== "")
      .map(([option, input]) => `--${option}=${input.value.trim()}`);
    const wanted = name.value.trim();
    const ok = await withProgress(ctx, form, progress, `Creating ${wanted} from ${template.value}`, () =>
      api("PUT", "api/v1/containers", {name: wanted, template: template.value, store: store.value, xargs}));
    if (ok) {
      ctx.report(`create ${wanted}: ok`, "ok");
      form.reset();
      showOptions();
    }
  });
  return form;
}

function cloneForm(ctx, catalogue) {
  const source = select("clone", [], "");
  const name = nameInput();
  const store = select("store", catalogue.stores.map((s) => [s, s]), catalogue.stores[0]);
  const progress = h("p", {class: "progress", role: "status", hidden: true});
  api("GET", "api/v1/containers").then((list) => {
    // Only a stopped container can be cloned; the others are not offered.
    const stopped = list.filter((c) => String(c.state).toLowerCase() === "stopped");
    fill(source, stopped.map((c) => h("option", {value: c.container}, c.container)));
  }).catch((error) => ctx.report(`containers: ${error.shown || error.message}`, "error"));
  const form = h("form", {id: "clone-form", "aria-labelledby": "clone-title"},
    h("h2", {id: "clone-title"}, "Clone a stopped container"),
    field("Source", source), field("New name", name), field("Store", store),
    h("div", {class: "buttons"}, h("button", {type: "submit"}, "Clone")), progress);
  on(form, "submit", async (event) => {
    event.preventDefault();
    const wanted = name.value.trim();
    const ok = await withProgress(ctx, form, progress, `Cloning ${source.value} as ${wanted}`, () =>
      api("PUT", "api/v1/containers", {name: wanted, clone: source.value, store: store.value}));
    if (ok) {
      ctx.report(`clone ${source.value} as ${wanted}: ok`, "ok");
      name.value = "";
    }
  });
  return form;
}

export function createPage(ctx) {
  const holder = h("div", {}, h("p", {}, "Loading the allowed templates…"));
  api("GET", "api/v1/templates").then((catalogue) => {
    fill(holder, createForm(ctx, catalogue), cloneForm(ctx, catalogue));
  }).catch((error) => fill(holder, h("p", {class: "error"}, `templates: ${error.shown || error.message}`)));
  return {node: h("section", {"aria-labelledby": "new-title"},
    h("h1", {id: "new-title", tabindex: "-1"}, "New container"), holder), stop() {}};
}

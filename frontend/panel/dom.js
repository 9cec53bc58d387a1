// DOM building for the panel: every value from the API becomes a text node, never markup.
// Invariant: nothing here (or anywhere in the panel) assigns innerHTML, outerHTML or
// insertAdjacentHTML, or writes the document; an attribute is set by name, never an on* one.

const FORBIDDEN_ATTRIBUTE = /^on|^style$|^srcdoc$/i;

// h("button", {type: "button", class: "x"}, "Start", child...) -> a new element.
// Attribute values and children are strings (made text nodes), nodes, arrays, or null.
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (FORBIDDEN_ATTRIBUTE.test(key)) throw new Error("refused attribute " + key);
    if (value === false || value === null || value === undefined) continue;
    node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

export function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Replaces what `node` holds with `children`.
export function fill(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

// Sets a text only when it changed, so a poll does not disturb a selection or a reader.
export function setText(node, text) {
  const value = text === null || text === undefined ? "" : String(text);
  if (node.textContent !== value) node.textContent = value;
}

export function on(node, event, handler) {
  node.addEventListener(event, handler);
  return node;
}

let unique = 0;
export function uid(prefix) {
  unique += 1;
  return `${prefix}-${unique}`;
}

// A labelled form control: <div class="field"><label for=id>text</label>control</div>.
export function field(labelText, control, hint) {
  if (!control.id) control.id = uid("f");
  const parts = [h("label", {for: control.id}, labelText), control];
  if (hint) {
    const hintNode = h("span", {class: "hint", id: uid("hint")}, hint);
    control.setAttribute("aria-describedby", hintNode.id);
    parts.push(hintNode);
  }
  return h("div", {class: "field"}, parts);
}

export function select(name, options, selected) {
  return h("select", {name},
    options.map(([value, text]) => h("option", {value, selected: value === selected}, text)));
}

export function button(text, handler, attrs) {
  return on(h("button", {type: "button", ...attrs}, text), "click", handler);
}

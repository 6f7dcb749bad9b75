// A small offline reader of /openapi.json: each operation with its parameters, body fields and responses.
"use strict";

const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
};

function resolve(spec, schema) {
  while (schema && schema.$ref) schema = spec.components.schemas[schema.$ref.split("/").pop()];
  return schema || {};
}

function typeOf(spec, schema) {
  schema = resolve(spec, schema);
  if (schema.anyOf) return schema.anyOf.map((s) => typeOf(spec, s)).join(" | ");
  if (schema.type === "array") return `${typeOf(spec, schema.items)}[]`;
  if (schema.title && schema.properties) return schema.title;
  return schema.type || "any";
}

function limits(schema) {
  const parts = [];
  for (const [key, label] of [["minimum", "≥"], ["maximum", "≤"], ["minItems", "items ≥"], ["maxLength", "length ≤"]]) {
    if (schema[key] !== undefined) parts.push(`${label} ${schema[key]}`);
  }
  return parts.join(", ");
}

function fieldTable(spec, schema) {
  schema = resolve(spec, schema);
  if (!schema.properties) return null;
  const required = new Set(schema.required || []);
  const rows = Object.entries(schema.properties).map(([name, prop]) => el("tr", {},
    el("td", {}, el("code", { textContent: name + (required.has(name) ? " *" : "") })),
    el("td", { textContent: typeOf(spec, prop) }),
    el("td", { textContent: prop.default === undefined ? "" : JSON.stringify(prop.default) }),
    el("td", { textContent: [prop.description, limits(prop)].filter(Boolean).join(" · ") })));
  return el("table", {}, el("tr", {}, ...["field", "type", "default", "meaning"].map((h) => el("th", { textContent: h }))), ...rows);
}

function operation(spec, path, method, op) {
  const box = el("section", { className: "op" },
    el("h3", {}, el("span", { className: `method ${method}`, textContent: method.toUpperCase() }), path),
    el("p", { textContent: [op.summary, op.description].filter(Boolean).join(" — ") }));
  for (const p of op.parameters || []) {
    box.append(el("p", { className: "muted", textContent: `query ${p.name}: ${typeOf(spec, p.schema)}` }));
  }
  const body = op.requestBody && op.requestBody.content["application/json"];
  if (body) box.append(el("p", { textContent: "JSON body:" }), fieldTable(spec, body.schema));
  const codes = Object.entries(op.responses || {}).map(([code, r]) => `${code} ${r.description}`);
  box.append(el("p", { className: "muted", textContent: "Responses: " + codes.join(" · ") }));
  return box;
}

async function render() {
  const spec = await (await fetch("/openapi.json")).json();
  const root = document.getElementById("docs");
  root.replaceChildren(el("p", { textContent: spec.info.description || "" }));
  const byTag = new Map();
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const tag = (op.tags || ["other"])[0];
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push(operation(spec, path, method, op));
    }
  }
  for (const [tag, ops] of byTag) root.append(el("h2", { className: "tag", textContent: tag }), ...ops);
}

render().catch((err) => (document.getElementById("docs").textContent = `could not load the spec: ${err}`));

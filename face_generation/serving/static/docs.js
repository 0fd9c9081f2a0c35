// The API documentation from /openapi.json, drawn here: served by the app, so it works offline
// (FastAPI's own /docs loads Swagger UI from a CDN).
"use strict";

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function schemaText(schema, spec) {
  if (!schema) return "";
  if (schema.$ref) {
    const name = schema.$ref.split("/").pop();
    const target = spec.components.schemas[name] || {};
    const fields = Object.entries(target.properties || {}).map(
      ([field, value]) => `  ${field}: ${value.type || (value.anyOf || []).map((a) => a.type).join(" | ") || "object"}` +
        (value.description ? `  (${value.description})` : ""));
    return `${name} {\n${fields.join("\n")}\n}`;
  }
  return JSON.stringify(schema);
}

async function main() {
  const spec = await (await fetch("/openapi.json")).json();
  const main = document.getElementById("endpoints");
  main.replaceChildren(element("p", spec.info.summary || spec.info.title));
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, operation] of Object.entries(methods)) {
      const section = element("section");
      section.append(element("h2", `${method.toUpperCase()} ${path}`));
      if (operation.description) section.append(element("pre", operation.description));
      for (const parameter of operation.parameters || []) {
        section.append(element("p", `${parameter.in} ${parameter.name}${parameter.required ? " (required)" : ""}` +
          (parameter.description ? `: ${parameter.description}` : "")));
      }
      const body = operation.requestBody && operation.requestBody.content;
      for (const [type, content] of Object.entries(body || {})) {
        section.append(element("p", `body ${type}`), element("pre", schemaText(content.schema, spec)));
      }
      main.append(section);
    }
  }
}

main().catch((error) => {
  document.getElementById("endpoints").replaceChildren(element("p", `cannot read /openapi.json: ${error}`));
});

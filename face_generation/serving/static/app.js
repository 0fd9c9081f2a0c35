// The page: pick a model, then generate, make variants of reference photos, or reconstruct.
// Plain JavaScript against the service's own API; nothing is loaded from elsewhere.
"use strict";

const $ = (selector) => document.querySelector(selector);
let models = [];

function current() {
  return models.find((model) => model.name === $("#model").value);
}

function showError(message) {
  $("#error").textContent = message;
  $("#error").hidden = !message;
}

// One input per sampling option of the model, holding its default; typed like the default.
function optionInputs(model) {
  return Object.entries(model.options).map(([name, value]) => {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.name = "option:" + name;
    input.dataset.kind = typeof value;
    if (typeof value === "boolean") {
      input.type = "checkbox";
      input.checked = value;
    } else {
      input.type = typeof value === "number" ? "number" : "text";
      input.step = "any";
      input.value = value;
    }
    label.append(name + " ", input);
    return label;
  });
}

function readOptions(form) {
  const options = {};
  for (const input of form.querySelectorAll("[name^='option:']")) {
    const name = input.name.slice("option:".length);
    const kind = input.dataset.kind;
    options[name] = kind === "boolean" ? input.checked : kind === "number" ? Number(input.value) : input.value;
  }
  return options;
}

function selectModel() {
  const model = current();
  if (!model) return;
  const inputs = Object.entries(model.inputs).filter(([, yes]) => yes).map(([name]) => name);
  $("#model-info").textContent =
    `${model.family} · version ${model.version} · ${model.resolution}×${model.resolution} · ` +
    `takes: ${inputs.join(", ")}` + (model.condition ? ` · conditioned on ${model.condition}` : "");
  $("#generate-form").hidden = !model.inputs.generate;
  $("#reference-form").hidden = !model.inputs.reference;
  $("#reconstruct-form").hidden = !model.inputs.reconstruct;
  for (const form of document.querySelectorAll("form")) {
    const options = form.querySelector(".options");
    if (options) options.replaceChildren(...optionInputs(model));
    for (const label of form.querySelectorAll(".test-faces")) {
      label.hidden = model.test_faces === 0;
      label.querySelector("input").placeholder = model.test_faces ? `0 to ${model.test_faces - 1}` : "";
    }
    showPreviews(form);
  }
  showError("");
}

// Thumbnails of the photos and test faces a form will send.
function showPreviews(form) {
  const previews = form.querySelector(".previews");
  if (!previews) return;
  const model = current();
  const images = [];
  for (const file of form.elements.photos.files) {
    const image = new Image();
    image.src = URL.createObjectURL(file);
    images.push(image);
  }
  for (const index of form.elements.test_faces.value.split(",").map((part) => part.trim())) {
    if (!/^\d+$/.test(index) || Number(index) >= model.test_faces) continue;
    const image = new Image();
    image.src = `/test-face?model=${encodeURIComponent(model.name)}&index=${index}`;
    images.push(image);
  }
  previews.replaceChildren(...images);
}

function link(base64, filename) {
  const anchor = document.createElement("a");
  anchor.href = "data:image/png;base64," + base64;
  anchor.download = filename;
  anchor.title = "download " + filename;
  const image = new Image();
  image.src = anchor.href;
  image.alt = filename;
  anchor.append(image);
  return anchor;
}

// A result: one line saying what made it, then the images (each a PNG download).
function showResult(kind, result) {
  const article = document.createElement("article");
  article.className = "result " + kind;
  const meta = document.createElement("p");
  meta.className = "meta";
  const options = Object.entries(result.options).map(([name, value]) => `${name} ${value}`);
  meta.textContent = [
    `${kind}: ${result.model}`, `version ${result.version}`,
    result.seed === null ? null : `seed ${result.seed}`, ...options,
    `${result.seconds.toFixed(3)} s`,
  ].filter(Boolean).join(" · ");
  article.append(meta);
  const stem = `${result.model}-${result.seed ?? "input"}`.replace(/[^\w.-]+/g, "_");
  const images = result.images.map((image, i) => link(image, `${stem}-${String(i).padStart(3, "0")}.png`));
  if (result.inputs.length === 0) {
    const grid = document.createElement("div");
    grid.className = "grid";
    grid.append(...images);
    article.append(grid);
  } else {
    const perInput = images.length / result.inputs.length;
    result.inputs.forEach((input, i) => {
      const row = document.createElement("div");
      row.className = "row";
      row.append(link(input, `${stem}-input-${i}.png`), ...images.slice(i * perInput, (i + 1) * perInput));
      article.append(row);
    });
  }
  $("#results").prepend(article);
}

async function call(kind, request) {
  const button = document.activeElement;
  showError("");
  try {
    const response = await fetch("/" + kind, request);
    const body = await response.json().catch(() => ({ detail: response.statusText }));
    if (!response.ok) throw new Error(body.detail || response.statusText);
    showResult(kind, body);
  } catch (error) {
    showError(error.message);
  }
  if (button) button.focus();
}

function submitGenerate(event) {
  event.preventDefault();
  const form = event.target;
  const body = {
    model: current().name, n: Number(form.elements.n.value), seed: Number(form.elements.seed.value),
    options: readOptions(form), format: "json",
  };
  call("generate", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

function submitPhotos(kind) {
  return (event) => {
    event.preventDefault();
    const form = event.target;
    const data = new FormData();
    data.append("model", current().name);
    data.append("format", "json");
    for (const file of form.elements.photos.files) data.append("photos", file, file.name);
    data.append("test_faces", form.elements.test_faces.value);
    if (form.elements.n) data.append("n", form.elements.n.value);
    if (form.elements.seed) data.append("seed", form.elements.seed.value);
    if (form.querySelector(".options")) data.append("options", JSON.stringify(readOptions(form)));
    call(kind, { method: "POST", body: data });
  };
}

async function start() {
  $("#generate-form").addEventListener("submit", submitGenerate);
  $("#reference-form").addEventListener("submit", submitPhotos("reference"));
  $("#reconstruct-form").addEventListener("submit", submitPhotos("reconstruct"));
  for (const form of [$("#reference-form"), $("#reconstruct-form")]) {
    form.addEventListener("input", () => showPreviews(form));
  }
  $("#model").addEventListener("change", selectModel);
  try {
    models = await (await fetch("/models")).json();
  } catch (error) {
    showError("cannot list the models: " + error.message);
    return;
  }
  $("#model").replaceChildren(...models.map((model) => new Option(`${model.name} (${model.family}, ${model.version})`, model.name)));
  selectModel();
  document.body.dataset.ready = "true";  // the browser test waits for this
}

start();

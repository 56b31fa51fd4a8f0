// The page of `cifar-resnet serve`: pick, drop or paste an image (or click an example), POST it to
// /predict, show it, the 32x32 image the model saw, and the top classes with probability bars.
// Vanilla JS, no build step, no network but this server.
"use strict";

const TOP_K = 5;
const $ = (id) => document.getElementById(id);
let maxUploadBytes = 8e6;
let originalUrl = null;
let requestId = 0;

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  const box = $("error");
  box.textContent = "";
  box.hidden = true;
}

function setStatus(text) {
  $("status").textContent = text;
}

const pretty = (name) => (name || "").replace(/_/g, " ");
const percent = (p) => `${(100 * p).toFixed(1)}%`;

function showOriginal(file) {
  if (originalUrl) URL.revokeObjectURL(originalUrl);
  originalUrl = URL.createObjectURL(file);
  const img = $("original");
  img.onload = () => img.classList.toggle("pixelated", img.naturalWidth <= 64); // a tiny image: show its pixels
  img.src = originalUrl;
}

function render(result) {
  const top = result.top;
  $("top1").textContent = top.length ? `${pretty(top[0].class)} (${percent(top[0].prob)})` : "";
  $("top1").dataset.class = top.length ? top[0].class : "";
  $("superclass").textContent = result.superclass ? `superclass: ${pretty(result.superclass)}` : "";
  $("seen").src = result.input_png;
  const list = $("predictions");
  list.replaceChildren();
  for (const entry of top) {
    const item = document.createElement("li");
    item.className = "prediction";
    item.dataset.class = entry.class;
    item.dataset.prob = String(entry.prob);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = pretty(entry.class);
    const sup = document.createElement("span");
    sup.className = "super";
    sup.textContent = entry.superclass ? pretty(entry.superclass) : "";
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-valuenow", (100 * entry.prob).toFixed(1));
    bar.setAttribute("aria-label", `probability of ${pretty(entry.class)}`);
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${(100 * entry.prob).toFixed(2)}%`;
    bar.append(fill);
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = percent(entry.prob);
    item.append(name, sup, bar, pct);
    list.append(item);
  }
  $("result").hidden = false;
}

async function classify(file, filename) {
  clearError();
  if (!file) {
    showError("No image found: choose, drop or paste an image file.");
    return;
  }
  if (file.size > maxUploadBytes) {
    showError(`This file is ${(file.size / 1e6).toFixed(1)} MB; the server accepts at most ` +
              `${(maxUploadBytes / 1e6).toFixed(1)} MB.`);
    return;
  }
  const id = ++requestId;
  const form = new FormData();
  form.append("files", file, filename || file.name || "image.png");
  setStatus("Classifying\u2026");
  let response;
  let body = null;
  try {
    response = await fetch(`/predict?top_k=${TOP_K}`, { method: "POST", body: form });
    body = await response.json().catch(() => null);
  } catch (err) {
    if (id !== requestId) return;
    setStatus("");
    showError(`Could not reach the server (${err.message}).`);
    return;
  }
  if (id !== requestId) return; // a newer image was chosen meanwhile
  setStatus("");
  if (!response.ok) {
    const detail = body && typeof body.detail === "string" ? body.detail : JSON.stringify(body && body.detail);
    showError(`The server refused this file (${response.status}): ${detail || response.statusText}`);
    $("result").hidden = true;
    return;
  }
  showOriginal(file);
  render(body.results[0]);
}

function firstImage(files) {
  return Array.from(files || []).find((f) => f.type.startsWith("image/")) || (files && files[0]);
}

async function loadExamples() {
  const holder = $("examples");
  try {
    const response = await fetch("/examples");
    const examples = await response.json();
    for (const example of examples) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "example";
      button.dataset.label = example.label;
      button.title = example.title ? pretty(example.title) : `an image of ${pretty(example.label)}`;
      const img = document.createElement("img");
      img.src = example.url;
      img.alt = pretty(example.label);
      const caption = document.createElement("span");
      caption.textContent = pretty(example.label);
      button.append(img, caption);
      button.addEventListener("click", async () => {
        try {
          const blob = await (await fetch(example.url)).blob();
          await classify(new File([blob], example.filename, { type: blob.type || "image/png" }), example.filename);
        } catch (err) {
          showError(`Could not load the example (${err.message}).`);
        }
      });
      holder.append(button);
    }
  } catch (err) {
    holder.textContent = "The examples could not be loaded.";
  }
}

async function loadModelInfo() {
  try {
    const health = await (await fetch("/health")).json();
    maxUploadBytes = (health.max_upload_mb || 8) * 1e6;
    const temperature = health.temperature ? `, temperature ${Number(health.temperature).toFixed(2)}` : "";
    $("model-info").textContent = `Model ${health.model}: ${health.classes} classes${temperature}.`;
  } catch (err) {
    $("model-info").textContent = "";
    showError(`The server does not answer (${err.message}).`);
  }
}

function setUp() {
  const zone = $("drop-zone");
  $("file-input").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) classify(file, file.name);
    event.target.value = ""; // choosing the same file again fires change again
  });
  // a file dropped anywhere on the page is classified, never opened by the browser in place of the page
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (event.target === zone || !event.relatedTarget) zone.classList.remove("dragging");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = firstImage(event.dataTransfer && event.dataTransfer.files);
    if (file) classify(file, file.name);
    else showError("Only image files can be dropped here (not links or text).");
  });
  document.addEventListener("paste", (event) => {
    const items = Array.from((event.clipboardData && event.clipboardData.items) || []);
    const item = items.find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (!item) return;
    event.preventDefault();
    const file = item.getAsFile();
    const extension = (file.type.split("/")[1] || "png").replace("jpeg", "jpg");
    classify(file, file.name && file.name !== "image.png" ? file.name : `pasted.${extension}`);
  });
  // Enter or space on the focused drop zone opens the file picker
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      $("file-input").click();
    }
  });
  loadModelInfo();
  loadExamples();
}

setUp();

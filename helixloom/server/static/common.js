// Shared by the helixloom pages: the API key header, JSON calls with errors shown in #status.
"use strict";
const $ = (id) => document.getElementById(id);

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = localStorage.getItem("helixloom-key");
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

// Errors always show in #status; `quiet` calls (background polling) leave it alone otherwise.
async function api(method, path, body, { quiet = false } = {}) {
  if (!quiet) $("status").textContent = method === "GET" ? "" : "working…";
  const response = await fetch(path, { method, headers: headers(), body: body ? JSON.stringify(body) : undefined });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    $("status").textContent = (data.error && data.error.message) || response.statusText;
    throw new Error($("status").textContent);
  }
  if (!quiet) $("status").textContent = "";
  return data;
}

function escapeHtml(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function bindApiKey(onChange) {
  $("apikey").value = localStorage.getItem("helixloom-key") || "";
  $("apikey").addEventListener("change", () => { localStorage.setItem("helixloom-key", $("apikey").value); onChange(); });
}

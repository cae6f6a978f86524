// The rating page: A/B pairs from an improve run's queue, answered with buttons or the keyboard.
"use strict";
let items = [];
let thumbs = {};
let answered = 0;

function runName() { return $("run").value.trim(); }

async function load() {
  const run = runName();
  if (!run) { $("status").textContent = "name the improve run to rate (?run=NAME)"; return; }
  const data = await api("GET", `/api/rate/${encodeURIComponent(run)}/queue?limit=20`);
  items = data.data;
  answered = data.answered;
  show();
}

function show() {
  const item = items[0];
  $("item").hidden = !item;
  $("empty").hidden = !!item;
  $("progress").textContent = `${answered} answered · ${items.length} waiting`;
  if (!item) return;
  thumbs = {};
  $("prompt").textContent = item.prompt;
  for (const side of ["a", "b"]) {
    document.querySelector(`#${side} .text`).textContent = item[side];
    $(side).classList.remove("picked");
  }
  drawThumbs();
}

function drawThumbs() {
  for (const side of ["a", "b"]) $(`thumb-${side}`).textContent = { up: "👍", down: "👎" }[thumbs[side]] || "";
}

function cycleThumb(side) {
  thumbs[side] = { undefined: "up", up: "down", down: undefined }[thumbs[side]];
  if (!thumbs[side]) delete thumbs[side];
  drawThumbs();
}

let sending = false;
async function choose(choice) {
  const item = items[0];
  if (!item || sending) return;
  sending = true;
  try {
    if (choice !== "skip") $(choice).classList.add("picked");
    await api("POST", `/api/rate/${encodeURIComponent(runName())}/answer`, { item: item.id, choice, thumbs });
    items.shift();
    answered += 1;
    if (!items.length) await load(); else show();
  } finally {
    sending = false;
  }
}

document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT" || e.ctrlKey || e.metaKey || e.altKey) return;
  const key = e.key.toLowerCase();
  const action = { a: "a", arrowleft: "a", b: "b", arrowright: "b", s: "skip", arrowdown: "skip" }[key];
  if (action) { e.preventDefault(); choose(action); }
  else if (key === "1") cycleThumb("a");
  else if (key === "2") cycleThumb("b");
});
$("choose-a").addEventListener("click", () => choose("a"));
$("choose-b").addEventListener("click", () => choose("b"));
$("skip").addEventListener("click", () => choose("skip"));
$("run").value = new URLSearchParams(location.search).get("run") || "";
$("run").addEventListener("change", load);
bindApiKey(load);
load().catch(() => {});

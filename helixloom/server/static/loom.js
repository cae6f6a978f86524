// helixloom loom: a plain client of the server's /api routes. All state lives in the server's store and
// every change is sent as it is made; the page keeps only which tree and node are open (in the URL hash,
// so a reload comes back to them), the undo list of this visit, and caches.
// headers, api, escapeHtml and bindApiKey come from common.js; TreeGraph from loom-graph.js.
"use strict";
let tree = null;      // {tree_id, nodes: [...]}
let current = null;   // node id
let byId = new Map(), kidsOf = new Map();
let models = [], presets = {};
const tokenCache = new Map(); // node id -> tokens ([text, logprob, [[alt, logprob], ...]]) or null
const undoStack = [];         // {label, run: async () => void}
let pinned = false;           // the token popup stays while the pointer travels to it
let abPending = null;         // {pair: [id, id] in shown order}
const timings = (window.loomTimings = { open_ms: null, fetch_ms: null, render_ms: null });
const graph = new TreeGraph($("graph"), (id) => go(id));

// ------------------------------------------------------------------------------------------- the tree

function reindex() {
  byId = new Map(); kidsOf = new Map();
  for (const n of tree.nodes) {
    byId.set(n.id, n);
    if (n.parent_id) { if (!kidsOf.has(n.parent_id)) kidsOf.set(n.parent_id, []); kidsOf.get(n.parent_id).push(n); }
  }
}
const meta = (n) => n.meta || {};
const hidden = (n) => meta(n).hidden && !$("showhidden").checked;
const children = (id) => (kidsOf.get(id) || []).filter((n) => !hidden(n));
const rootOf = () => tree.nodes.find((n) => !n.parent_id);
function path(id) { const out = []; for (let n = byId.get(id); n; n = n.parent_id ? byId.get(n.parent_id) : null) out.unshift(n); return out; }
const isNew = (n) => n.author !== "human" && n.parent_id && !meta(n).visited;
const blind = (n) => $("blind").checked && meta(n).ab && !meta(n).ab_result;
const modelLabel = (n) => blind(n) ? "hidden (blind A/B)" : n.author === "human" ? "human" : (n.adapter || n.model || n.author || "?");

// One colour per model/adapter, stable across visits: a hue from the name's hash.
const PALETTE = ["#2563eb", "#16a34a", "#db2777", "#ea580c", "#7c3aed", "#0891b2", "#ca8a04", "#4d7c0f"];
function colourOf(n) {
  if (meta(n).pruned) return "#bbb";
  if (blind(n)) return "#6b7280";
  if (n.author === "human" || !n.parent_id) return "#111827";
  const name = n.adapter || n.model || n.author || "";
  let h = 0; for (const ch of name) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length];
}

function saveHash() { history.replaceState(null, "", "#tree=" + tree.tree_id + "&node=" + current); }

async function loadTrees(select) {
  const list = (await api("GET", "/api/trees")).data;
  $("trees").innerHTML = '<option value="">— trees —</option>' + list.map((t) =>
    `<option value="${t.tree_id}">${escapeHtml((t.root_text || "(empty)").slice(0, 60))} (${t.node_count})</option>`).join("");
  if (select) $("trees").value = select;
}

async function loadModels() {
  const data = await api("GET", "/api/loom/models");
  models = data.models; presets = data.presets;
  const opts = models.map((m) => `<option value="${escapeHtml(m.id)}">${escapeHtml(m.kind === "base" ? "base: " + m.id.split("/").pop() : m.id)}</option>`).join("");
  for (const id of ["model", "ab-a", "ab-b"]) $(id).innerHTML = opts;
  if (models.length > 1) $("ab-b").value = models[1].id;
  $("preset").innerHTML = '<option value="">custom (0.9)</option>' + Object.keys(presets).map((p) =>
    `<option value="${p}">${p} (T ${presets[p].temperature})</option>`).join("");
}

// What a weave may be steered by besides a yes/no question: trained rewards and what improve runs
// learned from ratings (GET /api/rewards), so what users taught steers the search the same day.
async function loadRewards() {
  const list = (await api("GET", "/api/rewards")).data;
  const keep = $("steer").value;
  $("steer").innerHTML = '<option value="">yes/no question</option>' + list.map((r) =>
    `<option value="${escapeHtml(r.spec)}">reward ${escapeHtml(r.spec)}</option>`).join("");
  if ([...$("steer").options].some((o) => o.value === keep)) $("steer").value = keep;
  steerChanged();
}

function steerChanged() { $("question").disabled = !!$("steer").value; }

async function openTree(treeId, nodeId) {
  const t0 = performance.now();
  const data = await api("GET", "/api/trees/" + treeId);
  timings.fetch_ms = performance.now() - t0; // the server's answer, transfer and JSON parsing
  setTree(data, nodeId);
  $("trees").value = treeId;
  timings.open_ms = performance.now() - t0;
}

// A new copy of the tree from the server (after any change): index it, lay it out, draw.
function setTree(data, nodeId) {
  const sameTree = tree && tree.tree_id === data.tree_id;
  tree = data; reindex();
  current = nodeId && byId.has(nodeId) ? nodeId : current && byId.has(current) ? current : rootOf().id;
  graph.layout(rootOf().id, children);
  if (!sameTree) graph.fit(false); // render() draws, with this tree's look
  render();
}

function useTree(data, nodeId) { setTree(data, nodeId); loadTrees(tree.tree_id); }

function go(id) { if (byId.has(id)) { current = id; pinned = false; $("tokpop").hidden = true; render(); } }

// ----------------------------------------------------------------------------------------- rendering

function render() {
  if (!tree) return;
  const t0 = performance.now();
  saveHash();
  const node = byId.get(current), nodes = path(current);
  if (!meta(node).visited) markVisited(node);
  $("text").innerHTML = nodes.map((n, i) => {
    const sibs = n.parent_id ? children(n.parent_id) : [];
    const fork = sibs.length > 1 ? `<sup class="fork" data-id="${n.id}" title="branch point: ${sibs.length} alternatives here (click for the next)">‹${sibs.indexOf(n) + 1}/${sibs.length}›</sup>` : "";
    const body = i === nodes.length - 1 ? currentText(n) : escapeHtml(n.text);
    return `${fork}<span class="${i === nodes.length - 1 ? "current" : "past"}" data-id="${n.id}">${body}</span>`;
  }).join("");
  renderInfo(node);
  renderOutline(nodes);
  renderBookmarks();
  graph.reveal(current);
  graph.draw({
    current, path: new Set(nodes.map((n) => n.id)), parentOf: (id) => byId.get(id).parent_id,
    colour: (id) => colourOf(byId.get(id)), isNew: (id) => isNew(byId.get(id)),
    bookmarked: (id) => !!meta(byId.get(id)).bookmark, scoreOf: (id) => byId.get(id).score,
    label: (id) => byId.get(id).text.trim().slice(0, 28), hasKids: (id) => children(id).length > 0,
  });
  $("legend").innerHTML = legend();
  if (node.has_tokens && !tokenCache.has(node.id)) loadTokens(node.id);
  timings.render_ms = performance.now() - t0;
}

function currentText(n) {
  const tokens = tokenCache.get(n.id);
  if (!tokens) return escapeHtml(n.text);
  const mode = $("colour").value;
  return tokens.map(([text, lp, alts], i) => {
    let style = "";
    if (mode === "prob") style = `background:hsla(${Math.round(120 * Math.exp(lp))},80%,70%,.55)`;
    if (mode === "entropy") style = `background:hsla(270,80%,65%,${Math.min(0.8, entropy(alts) / 3).toFixed(2)})`;
    // A token of only whitespace with a line break, or with no text at all (part of a character whose
    // bytes end in a later token), has no width of its own: the "nl" and "part" classes draw a marker
    // (CSS, so the marker is not part of the text) so it can be hovered and branched.
    const cls = text === "" ? "tok part" : /\n/.test(text) && !text.trim() ? "tok nl" : "tok";
    const title = text === "" ? ' title="part of a character: its bytes end in a later token"' : "";
    return `<span class="${cls}" data-i="${i}"${title} style="${style}">${escapeHtml(text)}</span>`;
  }).join("");
}

// The entropy (nats) of the top alternatives plus one bucket for the rest of the mass: a lower bound.
function entropy(alts) {
  let h = 0, mass = 0;
  for (const [, lp] of alts) { const p = Math.exp(lp); mass += p; if (p > 0) h -= p * lp; }
  const rest = 1 - mass; if (rest > 1e-6) h -= rest * Math.log(rest);
  return h;
}

function renderInfo(node) {
  const sibs = node.parent_id ? children(node.parent_id) : [node], m = meta(node);
  const s = m.sampler;
  $("info").innerHTML = [
    `depth ${node.depth}`,
    `sibling ${sibs.indexOf(node) + 1}/${sibs.length}`,
    `${children(current).length} children`,
    node.parent_id ? `<b class="who" style="color:${colourOf(node)}">${escapeHtml(modelLabel(node))}</b>` : "prompt",
    !blind(node) && m.adapter_version ? `adapter version ${escapeHtml(m.adapter_version.slice(0, 12))}` : "",
    !blind(node) && s ? `sampler ${escapeHtml(s.preset || "custom")} (T ${s.temperature}, top_p ${s.top_p}${s.top_k ? ", top_k " + s.top_k : ""})` : "",
    m.source ? `via ${escapeHtml(m.source)}` : "",
    node.score === null ? "unscored" : `evaluator score ${node.score.toFixed(3)}`,
    node.rating > 0 ? "rated good" : node.rating < 0 ? "rated bad" : "unrated",
    m.bookmark ? "★ bookmarked" : "",
    m.hidden ? "undone (hidden)" : "",
    m.edited_from ? "edited (the original is kept)" : "",
    m.counterfactual_of ? `counterfactual: token ${m.token_index} was “${escapeHtml(m.replaced)}”` : "",
    `<time title="created">${escapeHtml((node.created_at || "").replace("T", " ").slice(0, 19))}</time>${m.seconds ? ` in ${m.seconds}s` : ""}`,
  ].filter(Boolean).join(" · ");
  $("bookmark").textContent = m.bookmark ? "★ bookmarked" : "☆ bookmark";
}

function legend() {
  const seen = new Map();
  for (const n of tree.nodes) if (n.parent_id && n.author !== "human" && !blind(n) && !meta(n).pruned) seen.set(n.adapter || n.model || n.author, colourOf(n));
  return [...seen].slice(0, 8).map(([name, c]) => `<span style="color:${c}">● ${escapeHtml(String(name).split("/").pop())}</span>`).join(" ");
}

// The outline shows the open branch: every node on it with its siblings, and the current node's
// children; other subtrees stay folded (with their sizes), so a 10,000-node tree is a few dozen rows.
// Only the last OUTLINE_LEVELS levels of a deep branch nest (a thousand nested lists take the
// browser seconds to lay out); the levels above fold into one row.
const OUTLINE_LEVELS = 12;
function renderOutline(nodes) {
  const onPath = new Set(nodes.map((n) => n.id));
  const item = (n) => {
    const m = meta(n);
    const mark = n.rating > 0 ? '<b class="good">[+]</b> ' : n.rating < 0 ? '<b class="bad">[−]</b> ' : "";
    const label = (n.score === null ? "" : `[${n.score.toFixed(2)}] `) + n.text.trim().slice(0, 50);
    const cls = [n.id === current ? "current" : "", m.pruned ? "pruned" : "", isNew(n) ? "new" : "", m.hidden ? "undone" : ""].join(" ");
    const kids = children(n.id);
    const open = onPath.has(n.id) && kids.length;
    const fold = !open && kids.length ? ` <small class="fold">+${kids.length}</small>` : "";
    const badge = `<i class="dot" style="background:${colourOf(n)}"></i>${m.bookmark ? "★" : ""}`;
    return `<li><span data-id="${n.id}" class="${cls}">${badge}${mark}${escapeHtml(label || "(empty)")}${fold}</span>${open ? "<ul>" + kids.map(item).join("") + "</ul>" : ""}</li>`;
  };
  const top = Math.max(0, nodes.length - 1 - OUTLINE_LEVELS), start = nodes[top];
  const above = top > 0 ? `<li><span data-id="${nodes[top - 1].id}" class="above">⋯ ${top} levels above</span></li>` : "";
  const first = start.parent_id && top > 0 ? children(start.parent_id).map(item).join("") : item(start);
  $("outline").innerHTML = "<ul>" + above + first + "</ul>";
}

function renderBookmarks() {
  const marked = tree.nodes.filter((n) => meta(n).bookmark && !hidden(n));
  $("bookmarks").innerHTML = marked.length ? "<b>Bookmarks</b>" + marked.map((n) =>
    `<div class="bm" data-id="${n.id}">★ ${escapeHtml(n.text.trim().slice(0, 40) || "(empty)")}</div>`).join("") : "";
  $("bookmarks").querySelectorAll(".bm").forEach((el) => el.addEventListener("click", () => go(el.dataset.id)));
}

// --------------------------------------------------------------------------------------------- tokens

async function loadTokens(id) {
  tokenCache.set(id, null);
  const full = await api("GET", "/api/nodes/" + id, null, { quiet: true });
  tokenCache.set(id, (full.meta && full.meta.tokens) || null);
  if (current === id) render();
}

function showTokenPopup(el) {
  const tokens = tokenCache.get(current); if (!tokens) return;
  const i = +el.dataset.i, [text, lp, alts] = tokens[i];
  const pct = (x) => (100 * Math.exp(x)).toFixed(1) + "%";
  $("tokpop").innerHTML = `<div class="chosen">“${escapeHtml(text)}” ${pct(lp)} <small>(logprob ${lp.toFixed(2)}, entropy ≥ ${entropy(alts).toFixed(2)})</small></div>` +
    alts.filter(([a]) => a !== text).map(([a, alp]) =>
      `<button class="alt" data-i="${i}" data-token="${escapeHtml(a)}" title="branch here with this token and roll">${escapeHtml(JSON.stringify(a))} <small>${pct(alp)}</small></button>`).join("");
  $("tokpop").querySelectorAll(".alt").forEach((b) => b.addEventListener("click", () => branchFromToken(+b.dataset.i, b.dataset.token)));
  const r = el.getBoundingClientRect(), host = $("reader").getBoundingClientRect();
  $("tokpop").style.left = Math.max(0, r.left - host.left) + "px";
  $("tokpop").style.top = (r.bottom - host.top + 4) + "px";
  $("tokpop").hidden = false;
}

async function branchFromToken(index, token) {
  const before = current;
  const data = await api("POST", `/api/nodes/${current}/counterfactual`, { index, token, roll: rollBody() });
  pinned = false; $("tokpop").hidden = true;
  const target = data.new[0] || data.node_id;
  pushUndo("token branch", [data.node_id, ...data.new], before);
  useTree(data, target);
}

// --------------------------------------------------------------------------------------------- actions

function rollBody() {
  const body = { n: +$("n").value, max_tokens: +$("tokens").value, model: $("model").value || null };
  if ($("preset").value) body.preset = $("preset").value;
  return body;
}

async function roll() {
  const before = current;
  const data = await api("POST", `/api/nodes/${current}/children`, rollBody());
  pushUndo("roll", data.new, before);
  useTree(data, data.new[0] || current);
}

async function weave() {
  const question = $("question").value.trim() || "Is this a good continuation?";
  const budget = +$("budget").value, known = new Set(tree.nodes.map((n) => n.id)), before = current;
  const steer = $("steer").value;
  const data = await api("POST", `/api/nodes/${current}/weave`, {
    ...(steer ? { reward: steer } : { questions: [{ text: question }] }),
    budget, round_budget: Math.max(1, Math.ceil(budget / 3)),
    n_expand: Math.min(4, budget), tokens_per_node: +$("tokens").value,
  });
  const made = data.nodes.filter((n) => !known.has(n.id));
  pushUndo("weave", made.map((n) => n.id), before);
  const best = made.find((n) => n.meta && n.meta.best);
  useTree(data, best ? best.id : current);
}

async function abRoll() {
  const before = current;
  const body = { a: $("ab-a").value || null, b: $("ab-b").value || null, max_tokens: +$("tokens").value };
  if ($("preset").value) body.preset = $("preset").value;
  const data = await api("POST", `/api/nodes/${current}/ab`, body);
  pushUndo("A/B roll", data.pair, before);
  // Shown in a random order: which side came from which model is the server's secret until the choice.
  abPending = { pair: Math.random() < 0.5 ? data.pair : [data.pair[1], data.pair[0]], parent: current };
  useTree(data, current);
  $("abpanel").hidden = false; $("abresult").textContent = "";
  abPending.pair.forEach((id, i) => { $("abtext" + (i + 1)).textContent = byId.get(id).text; });
}

async function abPick(i) {
  if (!abPending) return;
  const chosen = abPending.pair[i], rejected = abPending.pair[1 - i];
  const data = await api("POST", "/api/ab/choice", { chosen, rejected });
  abPending = null; $("abpanel").hidden = true;
  useTree(data, chosen);
  const c = byId.get(chosen), r = byId.get(rejected);
  $("abresult").textContent = `Recorded: option ${i + 1} (${c.adapter || c.model}) preferred to option ${2 - i} (${r.adapter || r.model}).`;
}

async function rate(score, reason) {
  const id = current;
  useTree(await api("POST", `/api/nodes/${id}/rate`, { score, reason }));
  if (reason !== "undo") undoStack.push({ label: "rating", run: () => { current = id; return rate(score === "up" ? "down" : "up", "undo"); } });
}

async function setMarks(id, marks) {
  const res = await api("POST", `/api/nodes/${id}/marks`, marks, { quiet: true });
  byId.get(id).meta = res.meta;
}

async function toggleBookmark() {
  const id = current, on = !meta(byId.get(id)).bookmark;
  await setMarks(id, { bookmark: on });
  undoStack.push({ label: "bookmark", run: async () => { await setMarks(id, { bookmark: !on }); graph.invalidate(); render(); } });
  graph.invalidate(); render();
}

// A node read for the first time loses its hollow "new" look: painted over the tree view's copy (a
// full repaint costs tens of ms on a 10,000-node tree).
function markVisited(node) {
  node.meta = { ...meta(node), visited: true };
  graph.patch(node.id);
  api("POST", `/api/nodes/${node.id}/marks`, { visited: true }, { quiet: true }).catch(() => {});
}

function cycleSibling(id) {
  const n = byId.get(id), sibs = children(n.parent_id);
  go(sibs[(sibs.indexOf(n) + 1) % sibs.length].id);
}

// Undo never deletes: what a step made is hidden (kept in the store, "show undone" brings it back).
function pushUndo(label, ids, before) {
  const treeId = tree.tree_id;
  undoStack.push({ label, run: async () => {
    for (const id of ids) await setMarks(id, { hidden: true });
    if (tree.tree_id !== treeId) await openTree(treeId, before);
    else setTree(await api("GET", "/api/trees/" + treeId), before);
  } });
}

async function undo() {
  const step = undoStack.pop();
  if (!step) { $("status").textContent = "nothing to undo"; return; }
  await step.run();
  $("status").textContent = `undid the ${step.label}`;
}

function startEdit() { $("editor").hidden = false; $("edittext").value = byId.get(current).text; $("edittext").focus(); }

async function saveEdit() {
  const before = current;
  const data = await api("POST", `/api/nodes/${current}/edit`, { text: $("edittext").value });
  $("editor").hidden = true;
  pushUndo("edit", [data.node_id], before);
  if (data.tree_id !== tree.tree_id) tree = null;
  useTree(data, data.node_id);
}

function move(step) {
  const node = byId.get(current);
  if (step === "parent" && node.parent_id) current = node.parent_id;
  if (step === "child" && children(current).length) current = children(current)[0].id;
  if ((step === "prev" || step === "next") && node.parent_id) {
    const sibs = children(node.parent_id); const i = sibs.indexOf(node) + (step === "next" ? 1 : -1);
    if (i >= 0 && i < sibs.length) current = sibs[i].id;
  }
  if (step === "new") { const n = tree.nodes.find((x) => isNew(x) && !hidden(x)); if (n) current = n.id; }
  pinned = false; $("tokpop").hidden = true;
  render();
}

async function search() {
  const q = $("search").value.trim();
  if (!q || !tree) { $("results").hidden = true; return; }
  const found = (await api("GET", `/api/trees/${tree.tree_id}/search?q=${encodeURIComponent(q)}`)).data;
  $("results").hidden = false;
  $("results").innerHTML = `<b>${found.length} found</b>` + found.map((n) => {
    const at = n.text.toLowerCase().indexOf(q.toLowerCase()), from = Math.max(0, at - 20);
    const snip = escapeHtml(n.text.slice(from, at)) + "<mark>" + escapeHtml(n.text.slice(at, at + q.length)) + "</mark>" + escapeHtml(n.text.slice(at + q.length, at + q.length + 30));
    return `<div class="hit" data-id="${n.id}">${snip}</div>`;
  }).join("");
  $("results").querySelectorAll(".hit").forEach((el) => el.addEventListener("click", () => go(el.dataset.id)));
}

async function exportTree() {
  const full = await api("GET", `/api/trees/${tree.tree_id}/export`);
  const blob = new Blob([JSON.stringify(full, null, 2)], { type: "application/json" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob); a.download = `tree-${tree.tree_id}.json`; a.click();
}

async function importTree(file) {
  const data = await api("POST", "/api/trees/import", JSON.parse(await file.text()));
  tree = null;
  useTree(data, data.nodes.find((n) => !n.parent_id).id);
}

async function create() {
  const prompt = $("prompt").value;
  if (!prompt.trim()) { $("status").textContent = "write a prompt first"; return; }
  const data = await api("POST", "/api/trees", { prompt });
  $("prompt").value = "";
  tree = null;
  useTree(data, data.nodes[0].id);
}

// ------------------------------------------------------------------------------------------- wiring

$("create").onclick = create;
$("steer").onchange = steerChanged;
$("roll").onclick = roll; $("weave").onclick = weave; $("abroll").onclick = abRoll;
$("pick1").onclick = () => abPick(0); $("pick2").onclick = () => abPick(1);
$("parent").onclick = () => move("parent"); $("child").onclick = () => move("child");
$("prev").onclick = () => move("prev"); $("next").onclick = () => move("next");
$("up").onclick = () => rate("up"); $("down").onclick = () => rate("down");
$("edit").onclick = startEdit; $("save").onclick = saveEdit; $("cancel").onclick = () => { $("editor").hidden = true; };
$("bookmark").onclick = toggleBookmark; $("undo").onclick = undo;
$("showhidden").onchange = () => tree && setTree(tree);
$("blind").onchange = () => { graph.invalidate(); render(); }; $("colour").onchange = render;
$("export").onclick = exportTree;
$("import").onchange = (e) => e.target.files[0] && importTree(e.target.files[0]);
$("trees").onchange = (e) => e.target.value && openTree(e.target.value);
$("search").addEventListener("keydown", (e) => { if (e.key === "Enter") search(); if (e.key === "Escape") { $("search").value = ""; search(); } });
$("zoomin").onclick = () => graph.zoomAt(1.4, $("graph").clientWidth / 2, $("graph").clientHeight / 2);
$("zoomout").onclick = () => graph.zoomAt(1 / 1.4, $("graph").clientWidth / 2, $("graph").clientHeight / 2);
$("fit").onclick = () => graph.fit();
// Hovering a token shows its alternatives; clicking it pins them (so the pointer can travel to them
// across other tokens); Escape or a click elsewhere lets go.
$("text").addEventListener("mouseover", (e) => { if (!pinned && e.target.classList.contains("tok")) showTokenPopup(e.target); });
$("text").addEventListener("click", (e) => {
  const cls = e.target.classList;
  if (cls.contains("tok")) { showTokenPopup(e.target); pinned = true; e.stopPropagation(); }
  else if (cls.contains("fork")) cycleSibling(e.target.dataset.id);
  else if (cls.contains("past")) go(e.target.dataset.id);
});
$("outline").addEventListener("click", (e) => { const el = e.target.closest("span[data-id]"); if (el) go(el.dataset.id); });
document.addEventListener("click", (e) => { if (pinned && !$("tokpop").contains(e.target)) { pinned = false; $("tokpop").hidden = true; } });
bindApiKey(() => { loadTrees(); loadModels(); loadRewards().catch(() => {}); });

document.addEventListener("keydown", (e) => {
  if (!tree || ["TEXTAREA", "INPUT", "SELECT"].includes(e.target.tagName)) return;
  if ((e.ctrlKey || e.metaKey) && e.key === "z") { e.preventDefault(); undo(); return; }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const keys = { ArrowLeft: () => move("parent"), ArrowRight: () => move("child"), ArrowUp: () => move("prev"),
    ArrowDown: () => move("next"), r: roll, a: abRoll, w: weave, "+": () => rate("up"), "=": () => rate("up"),
    "-": () => rate("down"), e: startEdit, b: toggleBookmark, u: undo, n: () => move("new"), f: () => graph.fit(),
    "/": () => $("search").focus(), "1": () => abPick(0), "2": () => abPick(1),
    c: () => { const s = $("colour"); s.selectedIndex = (s.selectedIndex + 1) % s.options.length; render(); },
    Escape: () => { pinned = false; $("tokpop").hidden = true; } };
  if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
});

// A link to #tree=…&node=… (pasted, or back/forward) opens that node.
window.addEventListener("hashchange", () => {
  const params = new URLSearchParams(location.hash.slice(1)), t = params.get("tree");
  if (t && (!tree || tree.tree_id !== t)) openTree(t, params.get("node")).catch(() => {});
  else if (params.get("node")) go(params.get("node"));
});

(async () => {
  const params = new URLSearchParams(location.hash.slice(1));
  loadRewards().catch(() => {}); // the picker is optional: a failed listing never blocks opening a tree
  await Promise.all([loadTrees(params.get("tree")), loadModels()]);
  if (params.get("tree")) await openTree(params.get("tree"), params.get("node"));
})().catch(() => {});

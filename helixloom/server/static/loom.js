// helixloom loom: a plain client of the server's /api routes. All state lives in the server's store;
// the page keeps only which tree and node are open (in the URL hash, so a reload comes back to them).
// headers, api, escapeHtml and bindApiKey come from common.js.
"use strict";
let tree = null;      // {tree_id, nodes: [...]}
let current = null;   // node id

const byId = (id) => tree.nodes.find((n) => n.id === id);
const children = (id) => tree.nodes.filter((n) => n.parent_id === id);
function path(id) { const out = []; for (let n = byId(id); n; n = n.parent_id ? byId(n.parent_id) : null) out.unshift(n); return out; }

function saveHash() { location.hash = "tree=" + tree.tree_id + "&node=" + current; }

async function loadTrees(select) {
  const list = (await api("GET", "/api/trees")).data;
  $("trees").innerHTML = '<option value="">— trees —</option>' + list.map((t) =>
    `<option value="${t.tree_id}">${escapeHtml(t.root_text.slice(0, 60))} (${t.node_count})</option>`).join("");
  if (select) $("trees").value = select;
}

async function openTree(treeId, nodeId) {
  tree = await api("GET", "/api/trees/" + treeId);
  current = nodeId && byId(nodeId) ? nodeId : tree.nodes.find((n) => !n.parent_id).id;
  $("trees").value = treeId;
  render();
}

function useTree(data, nodeId) { tree = data; current = nodeId || current; render(); loadTrees(tree.tree_id); }


function render() {
  if (!tree) return;
  saveHash();
  const nodes = path(current);
  $("text").innerHTML = nodes.map((n, i) =>
    `<span class="${i === nodes.length - 1 ? "current" : "past"}">${escapeHtml(n.text)}</span>`).join("");
  const node = byId(current);
  const sibs = node.parent_id ? children(node.parent_id) : [node];
  $("info").textContent = [
    `depth ${node.depth}`,
    `sibling ${sibs.indexOf(node) + 1}/${sibs.length}`,
    `${children(current).length} children`,
    node.score === null ? "unscored" : `evaluator score ${node.score.toFixed(3)}`,
    node.rating > 0 ? "rated good" : node.rating < 0 ? "rated bad" : "unrated",
    node.author ? `by ${node.author}` : "",
  ].filter(Boolean).join(" · ");
  const root = tree.nodes.find((n) => !n.parent_id);
  $("outline").innerHTML = "<ul>" + outline(root) + "</ul>";
  $("outline").querySelectorAll("span[data-id]").forEach((el) => el.addEventListener("click", () => { current = el.dataset.id; render(); }));
}

function outline(node) {
  const mark = node.rating > 0 ? '<b class="good">[+]</b> ' : node.rating < 0 ? '<b class="bad">[−]</b> ' : "";
  const label = (node.score === null ? "" : `[${node.score.toFixed(2)}] `) + node.text.trim().slice(0, 50);
  const cls = [node.id === current ? "current" : "", node.meta && node.meta.pruned ? "pruned" : ""].join(" ");
  const kids = children(node.id).map(outline).join("");
  return `<li><span data-id="${node.id}" class="${cls}">${mark}${escapeHtml(label || "(empty)")}</span>${kids ? "<ul>" + kids + "</ul>" : ""}</li>`;
}

function move(step) {
  const node = byId(current);
  if (step === "parent" && node.parent_id) current = node.parent_id;
  if (step === "child" && children(current).length) current = children(current)[0].id;
  if ((step === "prev" || step === "next") && node.parent_id) {
    const sibs = children(node.parent_id); const i = sibs.indexOf(node) + (step === "next" ? 1 : -1);
    if (i >= 0 && i < sibs.length) current = sibs[i].id;
  }
  render();
}

async function roll() {
  const before = new Set(children(current).map((n) => n.id));
  const data = await api("POST", `/api/nodes/${current}/children`, { n: +$("n").value, max_tokens: +$("tokens").value });
  tree = data;
  const fresh = children(current).find((n) => !before.has(n.id));
  if (fresh) current = fresh.id;
  render(); loadTrees(tree.tree_id);
}

async function weave() {
  const question = $("question").value.trim() || "Is this a good continuation?";
  const budget = +$("budget").value;
  useTree(await api("POST", `/api/nodes/${current}/weave`, {
    questions: [{ text: question }], budget, round_budget: Math.max(1, Math.ceil(budget / 3)),
    n_expand: Math.min(4, budget), tokens_per_node: +$("tokens").value,
  }));
}

async function rate(score) { useTree(await api("POST", `/api/nodes/${current}/rate`, { score })); }

function startEdit() { $("editor").hidden = false; $("edittext").value = byId(current).text; $("edittext").focus(); }

async function saveEdit() {
  const data = await api("POST", `/api/nodes/${current}/edit`, { text: $("edittext").value });
  $("editor").hidden = true;
  useTree(data, data.node_id);
}

function exportTree() {
  const blob = new Blob([JSON.stringify(tree, null, 2)], { type: "application/json" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob); a.download = `tree-${tree.tree_id}.json`; a.click();
}

async function importTree(file) {
  const data = await api("POST", "/api/trees/import", JSON.parse(await file.text()));
  useTree(data, data.nodes.find((n) => !n.parent_id).id);
}

async function create() {
  const prompt = $("prompt").value;
  if (!prompt.trim()) { $("status").textContent = "write a prompt first"; return; }
  const data = await api("POST", "/api/trees", { prompt });
  $("prompt").value = "";
  useTree(data, data.nodes[0].id);
}

$("create").onclick = create;
$("roll").onclick = roll; $("weave").onclick = weave;
$("parent").onclick = () => move("parent"); $("child").onclick = () => move("child");
$("prev").onclick = () => move("prev"); $("next").onclick = () => move("next");
$("up").onclick = () => rate("up"); $("down").onclick = () => rate("down");
$("edit").onclick = startEdit; $("save").onclick = saveEdit; $("cancel").onclick = () => { $("editor").hidden = true; };
$("export").onclick = exportTree;
$("import").onchange = (e) => e.target.files[0] && importTree(e.target.files[0]);
$("trees").onchange = (e) => e.target.value && openTree(e.target.value);
bindApiKey(() => loadTrees());

document.addEventListener("keydown", (e) => {
  if (!tree || ["TEXTAREA", "INPUT", "SELECT"].includes(e.target.tagName)) return;
  const keys = { ArrowLeft: () => move("parent"), ArrowRight: () => move("child"), ArrowUp: () => move("prev"),
    ArrowDown: () => move("next"), r: roll, w: weave, "+": () => rate("up"), "=": () => rate("up"), "-": () => rate("down"), e: startEdit };
  if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
});

(async () => {
  const params = new URLSearchParams(location.hash.slice(1));
  await loadTrees(params.get("tree"));
  if (params.get("tree")) await openTree(params.get("tree"), params.get("node"));
})().catch(() => {});

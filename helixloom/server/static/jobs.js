// helixloom jobs: a plain client of /api/jobs. Polls every 2 s while the page is open.
// headers, api, escapeHtml and bindApiKey come from common.js.
"use strict";
let selected = new URLSearchParams(location.hash.slice(1)).get("job");


function progressCell(job) {
  const message = escapeHtml(job.message || "");
  if (!job.total) return message;
  const done = job.progress || 0;
  const pct = Math.min(100, Math.round((100 * done) / job.total));
  return `<progress max="${job.total}" value="${done}" title="${pct}%"></progress> ${done}/${job.total} ${message}`;
}

async function refresh() {
  const list = (await api("GET", "/api/jobs?limit=100", null, { quiet: true })).data;
  $("jobs").querySelector("tbody").innerHTML = list.map((j) => `
    <tr data-id="${j.id}" class="${j.id === selected ? "current" : ""}">
      <td>${escapeHtml(j.created_at.slice(0, 19).replace("T", " "))}</td>
      <td>${escapeHtml(j.kind)}</td>
      <td>${escapeHtml(j.name || "")}</td>
      <td class="status-${j.status}">${j.status}</td>
      <td>${progressCell(j)}</td>
      <td>${j.status === "queued" || j.status === "running" ? `<button class="cancel" data-id="${j.id}">Cancel</button>` : ""}</td>
    </tr>`).join("") || '<tr><td colspan="6">no jobs yet</td></tr>';
  if (selected) await showDetail(selected);
}

async function showDetail(id) {
  const job = await api("GET", "/api/jobs/" + id, null, { quiet: true });
  $("detail").hidden = false;
  $("detail-title").textContent = `${job.kind}${job.name ? " " + job.name : ""}: ${job.status}`;
  const argv = (job.params && job.params.argv) || [];
  $("detail-command").textContent = argv.length ? "helixloom " + argv.join(" ") : "";
  $("detail-error").textContent = job.error || "";
  $("detail-result").hidden = job.result == null;
  $("detail-result").textContent = job.result == null ? "" : "result: " + JSON.stringify(job.result, null, 2);
  for (const [id, text] of [["detail-log", job.log.join("\n")], ["detail-output", job.output || ""]]) {
    const el = $(id);
    const atEnd = el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
    if (el.textContent !== text) { el.textContent = text; if (atEnd) el.scrollTop = el.scrollHeight; }
  }
  $("detail-output").hidden = !job.output;
}

$("jobs").addEventListener("click", async (event) => {
  const button = event.target.closest("button.cancel");
  if (button) {
    await api("POST", `/api/jobs/${button.dataset.id}/cancel`);
    return refresh();
  }
  const row = event.target.closest("tr[data-id]");
  if (row) {
    selected = row.dataset.id;
    location.hash = "job=" + selected;
    return refresh();
  }
});

$("start").addEventListener("click", async () => {
  const command = $("command").value.trim();
  if (!command) { $("status").textContent = "write a command first"; return; }
  const job = await api("POST", "/api/jobs", { command });
  selected = job.id;
  location.hash = "job=" + selected;
  $("command").value = "";
  await refresh();
});
$("command").addEventListener("keydown", (e) => { if (e.key === "Enter") $("start").click(); });

bindApiKey(() => refresh().catch(() => {}));

refresh().catch(() => {});
setInterval(() => refresh().catch(() => {}), 2000);

// helixloom chat: a plain client of /v1/chat/completions (streamed) and /api/sessions/{id}/feedback.
// With the "helixnet" model the actor's answer and the critique stream first (reasoning_content,
// each chunk naming its helixnet_stage) and show folded above the regenerated answer.
// headers, api, escapeHtml and bindApiKey come from common.js.
"use strict";
let history = [];       // [{role, content}] sent with every request
let controller = null;  // the AbortController of the answer being streamed

async function loadModels() {
  const models = (await api("GET", "/v1/models", null, { quiet: true })).data.map((m) => m.id);
  const keep = $("model").value || localStorage.getItem("helixloom-chat-model");
  $("model").innerHTML = models.map((id) => `<option value="${escapeHtml(id)}">${escapeHtml(id)}</option>`).join("");
  if (keep && models.includes(keep)) $("model").value = keep;
}

function bubble(role) {
  const div = document.createElement("div");
  div.className = "turn " + role;
  div.innerHTML = role === "user" ? '<div class="text"></div>'
    : '<details class="stages" hidden><summary>actor and critic</summary><div class="actor"></div><div class="critic"></div></details>'
      + '<div class="text"></div><div class="feedback" hidden>'
      + '<button class="up" title="a good answer">+ good</button><button class="down" title="a bad answer">− bad</button>'
      + '<input class="reason" placeholder="why? (optional)" aria-label="reason"><span class="rated"></span></div>';
  $("thread").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function request() {
  const body = { model: $("model").value, messages: history, stream: true };
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;  // else the server's default, fitted to the context
  const temperature = parseFloat($("temperature").value);
  if (temperature >= 0) body.temperature = temperature;
  return body;
}

async function send() {
  const text = $("message").value.trim();
  if (!text || controller) return;
  $("message").value = "";
  history.push({ role: "user", content: text });
  bubble("user").querySelector(".text").textContent = text;
  const reply = bubble("assistant");
  const out = reply.querySelector(".text");
  controller = new AbortController();
  $("send").hidden = true; $("stop").hidden = false; $("status").textContent = "";
  let answer = "";
  let sessionId = null;
  let failed = false;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify(request()),
    });
    sessionId = response.headers.get("X-Helixloom-Session");
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      throw new Error((data.error && data.error.message) || response.statusText);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const chunk = JSON.parse(line.slice(6));
        if (chunk.error) throw new Error(chunk.error.message);
        const delta = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta) || {};
        if (delta.reasoning_content) {
          const stages = reply.querySelector(".stages");
          stages.hidden = false;
          const part = reply.querySelector(chunk.helixnet_stage === "critic" ? ".critic" : ".actor");
          part.textContent += delta.reasoning_content;
        }
        if (delta.content) { answer += delta.content; out.textContent = answer; }
      }
    }
  } catch (err) {
    failed = true;  // nothing was recorded to rate (a stopped answer is not either)
    if (err.name !== "AbortError") $("status").textContent = err.message;
  } finally {
    controller = null;
    $("send").hidden = false; $("stop").hidden = true;
  }
  if (failed) {
    history.pop();  // the question goes unanswered: ask it again, or another
    reply.classList.add("failed");
    return;
  }
  history.push({ role: "assistant", content: answer });
  if (sessionId) {
    reply.dataset.session = sessionId;
    reply.querySelector(".feedback").hidden = false;
  }
  reply.scrollIntoView({ block: "end" });
}

async function rate(reply, score) {
  const reason = reply.querySelector(".reason").value.trim() || null;
  await api("POST", `/api/sessions/${reply.dataset.session}/feedback`, { score, reason });
  reply.querySelector(".rated").textContent = score === "up" ? "rated good" : "rated bad";
  reply.querySelector(".rated").className = "rated " + (score === "up" ? "good" : "bad");
}

$("thread").addEventListener("click", (event) => {
  const button = event.target.closest(".feedback button");
  if (button) rate(button.closest(".turn"), button.classList.contains("up") ? "up" : "down").catch(() => {});
});
$("send").addEventListener("click", send);
$("stop").addEventListener("click", () => controller && controller.abort());
$("message").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(); });
$("reset").addEventListener("click", () => { history = []; $("thread").innerHTML = ""; $("message").focus(); });
$("model").addEventListener("change", () => localStorage.setItem("helixloom-chat-model", $("model").value));
bindApiKey(() => loadModels().catch(() => {}));
loadModels().catch(() => {});

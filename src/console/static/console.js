// promptgate console: enhancements only. Every page works without this file.
"use strict";

function debounce(fn, ms) {
  let t;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// "/" focuses the search box; the prompt list filters as you type.
function setupList() {
  const search = document.getElementById("search");
  const table = document.getElementById("prompts");
  if (!search || !table) return;
  const tag = document.getElementById("tag");
  const shown = document.getElementById("shown");
  const rows = Array.from(table.tBodies[0].rows).filter((r) => r.dataset.search !== undefined);
  const apply = () => {
    const q = search.value.trim().toLowerCase();
    const t = tag ? tag.value : "";
    let n = 0;
    for (const r of rows) {
      const ok = (!q || r.dataset.search.includes(q)) && (!t || r.dataset.tags.includes(" " + t + " "));
      r.hidden = !ok;
      if (ok) n++;
    }
    if (shown) shown.textContent = (q || t) ? `${n} of ${rows.length} shown` : "";
  };
  search.addEventListener("input", apply);
  if (tag) tag.addEventListener("change", apply);
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && document.activeElement.tagName !== "INPUT" && document.activeElement.tagName !== "TEXTAREA") {
      e.preventDefault();
      search.focus();
    }
  });
}

// The editor validates as you type and marks each problem at its line.
function setupEditor() {
  const form = document.getElementById("editor");
  if (!form) return;
  const textarea = document.getElementById("template");
  const gutter = document.getElementById("gutter");
  const problems = document.getElementById("problems");
  const needs = document.getElementById("needs");
  const preview = document.getElementById("preview");
  const status = document.getElementById("status");
  let errLines = new Set();
  let seq = 0;

  const drawGutter = () => {
    const n = Math.max(1, textarea.value.split("\n").length);
    gutter.replaceChildren();
    for (let i = 1; i <= n; i++) {
      const d = el("div", { "data-line": String(i) }, String(i));
      if (errLines.has(i)) d.className = "err";
      gutter.appendChild(d);
    }
    gutter.scrollTop = textarea.scrollTop;
  };
  const goToLine = (line) => {
    const lines = textarea.value.split("\n");
    let pos = 0;
    for (let i = 0; i < line - 1 && i < lines.length; i++) pos += lines[i].length + 1;
    textarea.focus();
    textarea.setSelectionRange(pos, pos);
  };
  const validate = async () => {
    const mine = ++seq;
    const body = new URLSearchParams(new FormData(form));
    let result;
    try {
      const res = await fetch(form.dataset.validate, { method: "POST", body, credentials: "same-origin" });
      if (!res.ok) throw new Error(`validate answered ${res.status}`);
      result = await res.json();
    } catch (err) {
      status.textContent = "could not validate";
      status.className = "badge bad";
      return;
    }
    if (mine !== seq) return;
    errLines = new Set(result.problems.filter((p) => p.field === "template" && p.line).map((p) => p.line));
    problems.replaceChildren();
    for (const p of result.problems) {
      const li = el("li", { "data-line": p.line || "" });
      li.appendChild(el("strong", {}, p.field));
      let where = "";
      if (p.line) where += ` line ${p.line}`;
      if (p.line && p.column) where += `, column ${p.column}`;
      li.appendChild(document.createTextNode(`${where}: ${p.message}`));
      if (p.field === "template" && p.line) {
        li.tabIndex = 0;
        li.addEventListener("click", () => goToLine(p.line));
        li.addEventListener("keydown", (e) => { if (e.key === "Enter") goToLine(p.line); });
      }
      problems.appendChild(li);
    }
    const n = result.problems.length;
    status.textContent = result.ok ? "valid" : `${n} problem${n === 1 ? "" : "s"}`;
    status.className = "badge " + (result.ok ? "ok" : "bad");
    needs.replaceChildren();
    if (result.variables.length === 0) needs.appendChild(el("span", { class: "muted" }, "none"));
    for (const v of result.variables) { needs.appendChild(el("code", {}, v)); needs.appendChild(document.createTextNode(" ")); }
    preview.textContent = result.preview !== null ? result.preview : (result.preview_error || "");
    drawGutter();
  };
  const later = debounce(validate, 250);
  form.addEventListener("input", () => { drawGutter(); later(); });
  textarea.addEventListener("scroll", () => { gutter.scrollTop = textarea.scrollTop; });
  for (const li of problems.querySelectorAll("li[data-line]")) {
    const line = Number(li.dataset.line);
    if (line) li.addEventListener("click", () => goToLine(line));
  }
}

// The playground streams the answer in as it arrives.
function setupPlayground() {
  const pick = document.getElementById("version-pick");
  if (pick) pick.addEventListener("change", () => pick.form.submit());
  const form = document.getElementById("playground");
  const send = document.getElementById("send");
  if (!form || !send) return;
  send.addEventListener("click", async (e) => {
    e.preventDefault();
    const box = document.getElementById("answer-box");
    const answer = document.getElementById("answer");
    const stats = document.getElementById("stats");
    box.hidden = false;
    answer.textContent = "";
    stats.textContent = "waiting for the upstream…";
    send.disabled = true;
    const started = performance.now();
    try {
      const res = await fetch(form.dataset.stream, { method: "POST", body: new URLSearchParams(new FormData(form)), credentials: "same-origin" });
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          if (!line.trim()) continue;
          const said = JSON.parse(line);
          if (said.type === "delta") {
            answer.textContent += said.text;
            stats.textContent = `streaming… ${Math.round(performance.now() - started)} ms`;
          } else if (said.type === "error") {
            stats.replaceChildren(el("span", { class: "bad" }, said.message));
          } else if (said.type === "done") {
            const parts = [`status ${said.status}`, `${Math.round(said.latency_ms)} ms`];
            if (said.ttft_ms !== null) parts.push(`first token ${Math.round(said.ttft_ms)} ms`);
            if (said.prompt_tokens !== null) parts.push(`${said.prompt_tokens} + ${said.completion_tokens} tokens`);
            parts.push(said.cost_usd !== null ? `$${said.cost_usd.toFixed(6)}` : "cost unknown (no price for the model)");
            const keep = stats.querySelector(".bad");
            stats.textContent = parts.join(" · ");
            if (keep) { stats.prepend(" "); stats.prepend(keep); }
          }
        }
      }
    } catch (err) {
      stats.replaceChildren(el("span", { class: "bad" }, `the request failed: ${err.message}`));
    } finally {
      send.disabled = false;
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupList();
  setupEditor();
  setupPlayground();
});

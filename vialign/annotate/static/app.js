"use strict";
// Plain JS, no build step. State: the current item, its scores (null until set) and the focused cell.
const token = new URLSearchParams(location.search).get("token");
const state = { item: null, scores: [], cells: [], focus: 0 };
const $ = (id) => document.getElementById(id);

function withToken(url) {
  if (!token) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
}

async function api(path, options = {}) {
  const response = await fetch(withToken(path), {
    ...options, headers: { "Content-Type": "application/json", ...(options.headers || {}) },
  });
  if (!response.ok) throw new Error((await response.json()).detail || response.statusText);
  return response.json();
}

function annotator() { return $("annotator").value.trim(); }

async function refreshSide() {
  if (!annotator()) return;
  const [progress, items] = await Promise.all([
    api("/api/progress"), api("/api/items?annotator=" + encodeURIComponent(annotator())),
  ]);
  const mine = progress.annotators[annotator()] || { rated: 0, skipped: 0 };
  $("progress").textContent = `${mine.rated} / ${progress.items} rated, ${mine.skipped} skipped`;
  const list = $("items");
  list.replaceChildren(...items.map((it) => {
    const li = document.createElement("li");
    li.textContent = it.item_id;
    li.className = it.status + (state.item && state.item.item_id === it.item_id ? " current" : "");
    li.onclick = () => load(it.item_id);
    return li;
  }));
}

async function load(itemId) {
  if (!itemId) {
    $("item").hidden = true; $("empty").hidden = false; state.item = null; await refreshSide(); return;
  }
  const item = await api(`/api/items/${encodeURIComponent(itemId)}?annotator=${encodeURIComponent(annotator())}`);
  state.item = item;
  state.scores = item.candidates.map((_, k) =>
    Object.fromEntries(item.criteria.map((c) => [c, (item.ratings[k] || {})[c] ?? null])));
  $("item").hidden = false; $("empty").hidden = true;
  $("image").src = item.image ? withToken("/images/" + item.image.split("/").map(encodeURIComponent).join("/")) : "";
  $("kind").textContent = item.kind === "questions" ? "Rate each question set" : "Rate each answer";
  $("question").textContent = item.question ? "Question: " + item.question : "";
  render();
  state.focus = 0; showFocus();
  $("status").textContent = "";
  await refreshSide();
}

function render() {
  const box = $("candidates");
  state.cells = [];
  box.replaceChildren(...state.item.candidates.map((text, k) => {
    const card = document.createElement("div");
    card.className = "candidate";
    const p = document.createElement("p");
    p.className = "text";
    p.textContent = `${k + 1}. ` + (Array.isArray(text) ? text.join("\n") : text);
    card.append(p);
    for (const criterion of state.item.criteria) {
      const row = document.createElement("div");
      row.className = "score";
      row.dataset.candidate = k; row.dataset.criterion = criterion;
      const label = document.createElement("label");
      label.textContent = criterion;
      const input = document.createElement("input");
      Object.assign(input, { type: "range", min: 0, max: 1, step: 0.05, tabIndex: -1 });
      input.setAttribute("aria-label", `candidate ${k + 1} ${criterion}`);
      const out = document.createElement("output");
      input.oninput = () => setScore(state.cells.indexOf(row), Number(input.value));
      row.onclick = () => { state.focus = state.cells.indexOf(row); showFocus(); };
      row.append(label, input, out);
      card.append(row);
      state.cells.push(row);
    }
    return card;
  }));
  state.cells.forEach((_, i) => paint(i));
}

function paint(i) {
  const row = state.cells[i];
  const value = state.scores[row.dataset.candidate][row.dataset.criterion];
  row.classList.toggle("unset", value === null);
  row.querySelector("input").value = value ?? 0;
  row.querySelector("output").textContent = value === null ? "–" : value.toFixed(2);
  $("submit").disabled = state.scores.some((s) => Object.values(s).some((v) => v === null));
}

function setScore(i, value) {
  const row = state.cells[i];
  state.scores[row.dataset.candidate][row.dataset.criterion] = Math.round(Math.min(1, Math.max(0, value)) * 100) / 100;
  paint(i);
}

function showFocus() {
  state.cells.forEach((row, i) => row.classList.toggle("focus", i === state.focus));
  state.cells[state.focus]?.scrollIntoView({ block: "nearest" });
}

async function submit() {
  if ($("submit").disabled || !state.item) return;
  const ratings = state.scores.map((scores, candidate) => ({ candidate, scores }));
  try {
    const result = await api(`/api/items/${encodeURIComponent(state.item.item_id)}/ratings`, {
      method: "POST", body: JSON.stringify({ annotator: annotator(), ratings }),
    });
    $("status").textContent = "saved";
    await load(result.next);
  } catch (error) { $("status").textContent = "not saved: " + error.message; }
}

async function skip() {
  if (!state.item) return;
  const result = await api(`/api/items/${encodeURIComponent(state.item.item_id)}/skip`, {
    method: "POST", body: JSON.stringify({ annotator: annotator() }),
  });
  await load(result.next);
}

async function step(delta) {
  const items = await api("/api/items?annotator=" + encodeURIComponent(annotator()));
  const at = items.findIndex((it) => state.item && it.item_id === state.item.item_id);
  const next = items[(at + delta + items.length) % items.length];
  if (next) await load(next.item_id);
}

document.addEventListener("keydown", (event) => {
  if (event.target === $("annotator")) {
    if (event.key === "Enter") { event.preventDefault(); start(); }
    return;
  }
  if (!state.item) return;
  const key = event.key;
  const current = state.cells[state.focus];
  const value = current && state.scores[current.dataset.candidate][current.dataset.criterion];
  if (key === "ArrowDown" || key === "j") state.focus = Math.min(state.cells.length - 1, state.focus + 1);
  else if (key === "ArrowUp" || key === "k") state.focus = Math.max(0, state.focus - 1);
  else if (/^[0-4]$/.test(key)) { setScore(state.focus, Number(key) / 4); state.focus = Math.min(state.cells.length - 1, state.focus + 1); }
  else if (key === "ArrowRight") setScore(state.focus, (value ?? 0) + 0.05);
  else if (key === "ArrowLeft") setScore(state.focus, (value ?? 0) - 0.05);
  else if (key === "Enter") { submit(); }
  else if (key === "s") { skip(); }
  else if (key === "]") { step(1); }
  else if (key === "[") { step(-1); }
  else return;
  event.preventDefault();
  showFocus();
});

$("submit").onclick = submit;
$("skip").onclick = skip;

async function start() {
  if (!annotator()) { $("annotator").focus(); return; }
  localStorage.setItem("vialign-annotator", annotator());
  $("annotator").blur();
  const next = await api("/api/next?annotator=" + encodeURIComponent(annotator()));
  await load(next.item_id);
}

$("annotator").value = localStorage.getItem("vialign-annotator") || "";
$("annotator").onchange = start;
if (annotator()) start(); else $("annotator").focus();

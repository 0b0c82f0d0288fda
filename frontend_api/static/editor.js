// fanout's editor: write, press Tab, pick one of N completions from the front API.
// Typing what a shown suggestion goes on with keeps the list open (type-through), and
// with "Suggest while typing" on, a pause in typing asks as Tab would. What the writer
// does with each list (shown, accepted at a rank, dismissed) is reported to POST /events.
// Plain browser JavaScript, no build step. The document and the settings live in
// localStorage, so a reload or a failed request never loses what was written.
"use strict";

// The API key is kept apart from the settings: those are spread into the request body.
const STORE = { document: "fanout.document", settings: "fanout.settings", apiKey: "fanout.apiKey" };
const NUMBER_FIELDS = ["n_samples", "length", "temperature", "top_k", "top_p"];

const editor = document.getElementById("document");
const list = document.getElementById("suggestions");
const statusLine = document.getElementById("status");
const form = document.getElementById("settings-form");
const modelSelect = document.getElementById("model");
const modelName = document.getElementById("model-name");
const apiKeyInput = document.getElementById("api-key");
const settingsPanel = document.getElementById("settings");
const pauseOutput = document.getElementById("suggest-pause");

let inFlight = null;      // the AbortController of the request being waited on
let suggestions = [];     // [{value, time}] of the open list, as they came
let shown = [];           // indexes into suggestions of those the list shows
let selected = -1;        // index into shown of the highlighted suggestion
let anchor = 0;           // caret position the suggestions continue from
let asked = { head: "", tail: "" };  // the text before and after the anchor when asked
let typed = "";           // typed through at the anchor: consumed from every shown suggestion
let leaveOnTab = false;   // Esc with nothing open, then Tab: move focus on (no keyboard trap)
let preferredModel;      // the model saved in the settings, until the list of models loads
let listModel;           // the model_size the open list came from, for its events
// The suggestions shown for a context, excluded when Tab asks again for the same one;
// at most what the server takes (exclude: 16 texts of at most 2048 characters).
const MAX_EXCLUDE = 16;
const MAX_EXCLUDE_CHARS = 2048;
let alreadyShown = { context: null, texts: [] };

// ---- settings and document persistence -------------------------------------------

function readSettings() {
  const settings = { model_size: modelSelect.value || undefined,
                     stream: form.elements.stream.checked,
                     suggest_while_typing: form.elements.suggest_while_typing.checked };
  for (const name of NUMBER_FIELDS) {
    const value = Number(form.elements[name].value);
    if (form.elements[name].value !== "" && Number.isFinite(value)) settings[name] = value;
  }
  return settings;
}

function saveSettings() {
  localStorage.setItem(STORE.settings, JSON.stringify(readSettings()));
  modelName.textContent = modelSelect.value ? `model: ${modelSelect.value}` : "";
}

function restoreSettings() {
  let saved = {};
  try { saved = JSON.parse(localStorage.getItem(STORE.settings) || "{}"); } catch { saved = {}; }
  for (const name of NUMBER_FIELDS) {
    if (saved[name] !== undefined) form.elements[name].value = saved[name];
  }
  form.elements.stream.checked = saved.stream === true;
  form.elements.suggest_while_typing.checked = saved.suggest_while_typing === true;
  return saved.model_size;
}

function saveDocument() { localStorage.setItem(STORE.document, editor.value); }

function saveApiKey() { localStorage.setItem(STORE.apiKey, apiKeyInput.value.trim()); }

// ---- talking to the front API -----------------------------------------------------

// Only when a key is set: a server without keys never sees an Authorization header.
function authHeaders() {
  const key = apiKeyInput.value.trim();
  if (!key) return {};
  // fetch() throws a bare TypeError on such a header; say what is wrong instead.
  if (!/^[\x21-\x7e]+$/.test(key)) {
    throw new Error("The API key can hold only letters, digits and ASCII symbols: "
                    + "check it in Settings.");
  }
  return { Authorization: `Bearer ${key}` };
}

function keyMessage() {
  settingsPanel.open = true;  // the field the message points to
  return apiKeyInput.value.trim()
    ? "This server refused the API key: check it in Settings. Your text is safe."
    : "This server needs an API key: set it in Settings. Your text is safe.";
}

async function errorMessage(response) {
  if (response.status === 401) return keyMessage();
  let detail = "";
  try {
    const body = await response.json();
    // The front's own shape, or OpenAI's under /v1/ (the streamed suggestions).
    detail = body.description || body.title || body.error?.message || "";
  } catch { /* not JSON: keep the status alone */ }
  const what = response.status >= 500
    ? "The model server is not answering right now"
    : "The request was refused";
  return `${what} (${response.status}${detail ? ": " + detail : ""}). Your text is safe.`;
}

// What the writer did with the open list, for the operator's counters: fire and forget,
// never in the way of typing (no await); keepalive lets it outlive the page closing.
// Events: shown {n} when a list opens; accepted {rank} on Enter or a click, rank being the
// suggestion's place in the list as first shown (type-through narrows the list, not the
// rank); dismissed on Esc or when typing closes the list. A list replaced by a new request,
// emptied by failures or closed by leaving the editor reports nothing.
function report(event, fields = {}) {
  let headers;
  try {
    headers = { "Content-Type": "application/json", ...authHeaders() };
  } catch { return; }  // a malformed key: the request itself says so
  const body = JSON.stringify({ event, model_size: listModel, ...fields });
  fetch("/events", { method: "POST", headers, body, keepalive: true }).catch(() => {});
}

async function loadModels(preferred) {
  try {
    const response = await fetch("/models", { headers: authHeaders() });
    if (!response.ok) throw new Error(await errorMessage(response));
    const body = await response.json();
    modelSelect.replaceChildren(...body.models.map((model) => {
      const option = new Option(`${model.name} — ${model.model}`, model.name);
      option.title = `${model.workers} workers on ${model.devices.join(", ")}`;
      return option;
    }));
    const names = body.models.map((model) => model.name);
    modelSelect.value = names.includes(preferred) ? preferred : body.default;
    saveSettings();
  } catch (error) {
    showStatus(error.message || "Could not list the models.", "error");
  }
}

async function requestSuggestions() {
  abortInFlight();
  cancelSuggestTimer();
  closeList();  // a list of the old text would be typed through against the new anchor
  anchor = editor.selectionStart;
  asked = { head: editor.value.slice(0, anchor), tail: editor.value.slice(anchor) };
  lastAsked = { value: editor.value, caret: anchor };
  const controller = new AbortController();
  inFlight = controller;
  showStatus("Thinking…", "busy");
  // The editor's own settings stay here; the rest is the request's body.
  const { stream, suggest_while_typing: _, ...fields } = readSettings();
  listModel = fields.model_size;
  const context = asked.head;
  const started = performance.now();
  try {
    if (stream) {
      await streamSuggestions(context, fields, controller);
      return;
    }
    // Suggestions differ from each other, and Tab again on the same text gives new ones:
    // the server resamples repeats and the texts already shown here (exclude).
    const exclude = alreadyShown.context === context ? alreadyShown.texts : [];
    const response = await fetch("/autocomplete", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify({ context, ...fields, distinct: true,
                             ...(exclude.length ? { exclude } : {}) }),
      signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    const body = await response.json();
    if (controller.signal.aborted) return;  // typed meanwhile: this answer is stale
    noteLatency(performance.now() - started);
    showStatus(`${body.sentences.length} suggestions in ${body.time.toFixed(2)} s`
               + (body.partial ? ` (${body.failed.length} did not arrive in time)` : ""));
    openList(body.sentences);
    const texts = body.sentences.map((sentence) => sentence.value)
      .filter((text) => text.trim() && text.length <= MAX_EXCLUDE_CHARS);
    alreadyShown = { context, texts: [...exclude, ...texts].slice(-MAX_EXCLUDE) };
  } catch (error) {
    if (error.name === "AbortError") return;
    const offline = error instanceof TypeError;  // fetch itself failed: no server at all
    showStatus(offline ? "Cannot reach the server. Your text is safe." : error.message, "error");
  } finally {
    if (inFlight === controller) inFlight = null;
  }
}

// The same fan-out through the OpenAI-compatible route with "stream": the list opens at
// once and each suggestion grows as its worker writes it (server-sent events, one
// "data:" line per chunk, tagged with the suggestion's index, then "data: [DONE]").
async function streamSuggestions(context, fields, controller) {
  const started = performance.now();
  const response = await fetch("/v1/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json", ...authHeaders() },
    body: JSON.stringify({
      model: fields.model_size, prompt: context, n: fields.n_samples, stream: true,
      max_tokens: fields.length, temperature: fields.temperature, top_k: fields.top_k,
      top_p: fields.top_p,
      // /v1 keeps OpenAI's hard max_tokens unless asked: the editor wants whole words.
      // (distinct needs the whole texts, so streamed suggestions go without it.)
      stop_at: "word",
    }),
    signal: controller.signal,
  });
  if (!response.ok) throw new Error(await errorMessage(response));
  const growing = Array.from({ length: fields.n_samples || 1 },
                             () => ({ value: "", time: null, failed: false }));
  openList(growing);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();  // rejects with AbortError on abort
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const data = buffer.slice(0, end).split("\n").filter((line) => line.startsWith("data: "))
        .map((line) => line.slice(6)).join("\n");
      buffer = buffer.slice(end + 2);
      if (data === "[DONE]") {
        finishStream(growing, started);
        return;
      }
      for (const choice of JSON.parse(data).choices) {
        const suggestion = growing[choice.index];
        suggestion.value += choice.text;
        if (choice.finish_reason) {
          suggestion.time = (performance.now() - started) / 1000;
          suggestion.failed = choice.finish_reason === "error";
        }
        showSuggestion(choice.index);
      }
    }
  }
  throw new Error("The server ended the suggestions early. Your text is safe.");
}

function finishStream(growing, started) {
  const arrived = growing.filter((suggestion) => !suggestion.failed);
  const seconds = ((performance.now() - started) / 1000).toFixed(2);
  const failed = growing.length - arrived.length;
  showStatus(`${arrived.length} suggestions in ${seconds} s`
             + (failed ? ` (${failed} did not arrive in time)` : ""));
  noteLatency(performance.now() - started);
  if (failed) keepOnly(arrived);
}

function abortInFlight() {
  if (inFlight) {
    inFlight.abort();
    inFlight = null;
    showStatus("");
  }
}

// ---- the suggestion list ----------------------------------------------------------

function openList(sentences) {
  sentences.forEach((sentence, rank) => { sentence.rank = rank; });  // kept as it narrows
  report("shown", { n: sentences.length });
  suggestions = sentences;
  shown = [];
  selected = -1;
  typed = "";
  renderList();
  placeList(anchor);
  list.hidden = false;
  editor.setAttribute("aria-controls", list.id);
  editor.setAttribute("aria-expanded", "true");
}

// The suggestions that go on with what was typed through. One still streaming matches as
// far as it has arrived; a finished one typed to its end has nothing left to offer.
function matching(text) {
  return suggestions.flatMap((sentence, index) =>
    sentence.value.startsWith(text)
      && (!text || sentence.value.length > text.length || sentence.time === null)
      ? [index] : []);
}

// Build the items for the suggestions shown, keeping the highlighted one if it still is.
function renderList() {
  const highlighted = shown[selected];
  shown = matching(typed);
  list.replaceChildren(...shown.map((index, position) => {
    const item = document.createElement("li");
    item.role = "option";
    item.id = `suggestion-${position}`;
    const text = document.createElement("span");
    text.className = "text";
    const time = document.createElement("span");
    time.className = "time";
    item.append(text, time);
    fillItem(item, suggestions[index]);
    item.addEventListener("mousedown", (event) => {
      event.preventDefault();  // keep the focus (and the caret) in the document
      choose(position);
    });
    return item;
  }));
  select(Math.max(0, shown.indexOf(highlighted)));
}

// A suggestion's text past what was typed through, and its time; a streamed one is still
// being written until its time.
function fillItem(item, sentence) {
  item.querySelector(".text").textContent = sentence.value.slice(typed.length);
  item.querySelector(".time").textContent = sentence.failed ? "failed"
    : sentence.time === null ? "…" : `${sentence.time.toFixed(2)} s`;
  item.setAttribute("aria-busy", String(sentence.time === null));
}

// A streamed suggestion grew: refill its item, or rebuild the list if it now matches.
function showSuggestion(index) {
  if (list.hidden) return;
  const position = shown.indexOf(index);
  if (position >= 0) fillItem(list.children[position], suggestions[index]);
  else if (matching(typed).includes(index)) renderList();
}

// The stream ended with some suggestions failed: show the others, if any still match.
function keepOnly(sentences) {
  const highlighted = suggestions[shown[selected]];
  suggestions = sentences;
  shown = [];
  renderList();
  if (!shown.length) closeList();
  else select(Math.max(0, shown.indexOf(suggestions.indexOf(highlighted))));
}

function closeList() {
  list.hidden = true;
  list.replaceChildren();
  suggestions = [];
  shown = [];
  typed = "";
  selected = -1;
  editor.setAttribute("aria-expanded", "false");
  editor.removeAttribute("aria-activedescendant");
}

function select(position) {
  if (!shown.length) return;
  selected = (position + shown.length) % shown.length;
  [...list.children].forEach((item, i) => item.setAttribute("aria-selected", String(i === selected)));
  editor.setAttribute("aria-activedescendant", `suggestion-${selected}`);
}

function choose(position) {
  const chosen = suggestions[shown[position]];
  report("accepted", { rank: chosen.rank });
  const rest = chosen.value.slice(typed.length);
  const caret = anchor + typed.length;
  abortInFlight();  // a suggestion still streaming is taken as it stands
  editor.setRangeText(rest, caret, caret, "end");
  closeList();
  saveDocument();
  editor.focus();
}

// Typing while the list is open: if the text typed at the anchor (and nothing else) is
// the start of some suggestions, show those, less what was typed, and ask nothing.
// Backspace over typed-through text gives it back to the suggestions (the list widens
// again); anything else, or nothing matching, ends type-through: false.
function typeThrough() {
  const value = editor.value;
  const caret = editor.selectionStart;
  if (caret !== editor.selectionEnd || caret < anchor
      || value.slice(0, anchor) !== asked.head || value.slice(caret) !== asked.tail) return false;
  const text = value.slice(anchor, caret);
  if (!matching(text).length) return false;
  typed = text;
  renderList();
  placeList(caret);
  return true;
}

// Put the list just below the caret: measure the caret in a hidden copy of the textarea.
function placeList(position) {
  const style = getComputedStyle(editor);
  const mirror = document.createElement("div");
  for (const property of ["boxSizing", "width", "padding", "border", "font", "lineHeight",
                          "letterSpacing", "wordSpacing", "textIndent", "whiteSpace"]) {
    mirror.style[property] = style[property];
  }
  Object.assign(mirror.style, { position: "absolute", visibility: "hidden",
                                whiteSpace: "pre-wrap", overflowWrap: "break-word" });
  mirror.textContent = editor.value.slice(0, position);
  const caret = document.createElement("span");
  caret.textContent = "\u200b";
  mirror.append(caret);
  document.body.append(mirror);
  const top = caret.offsetTop + caret.offsetHeight - editor.scrollTop + 4;
  const left = Math.min(caret.offsetLeft, editor.clientWidth - 260);
  mirror.remove();
  list.style.top = `${Math.max(0, top)}px`;
  list.style.left = `${Math.max(0, left)}px`;
}

function showStatus(text, kind = "") {
  statusLine.textContent = text;
  statusLine.className = kind;
}

// ---- suggesting while typing -----------------------------------------------------

// With the setting on, a pause in typing asks as Tab would. The pause is
//   clamp(max(1.5 × typing gap, server latency / 2), 100 ms, 1 s),
// each an exponentially weighted moving average of recent ones (weight 0.3 to the newest):
// long enough not to ask in the middle of a word at this writer's pace, and no more often
// than a slow server can answer before the next keystroke cancels it. Before anything is
// measured the gap is 133 ms, so the first pause is 200 ms.
const PAUSE = { min: 100, max: 1000, base: 200 };
const WEIGHT = 0.3;
let typingGap = PAUSE.base / 1.5;  // ms between keystrokes
let latency = 0;                   // ms from asking to the last suggestion
let latencyKnown = false;
let lastKeystroke = null;
let suggestTimer = null;
let lastAsked = null;  // {value, caret} of the document the last request was for

function average(mean, sample) { return mean + WEIGHT * (sample - mean); }

function noteKeystroke() {
  const now = performance.now();
  // A gap as long as the longest pause is a pause, not the pace of typing.
  if (lastKeystroke !== null && now - lastKeystroke < PAUSE.max) {
    typingGap = average(typingGap, now - lastKeystroke);
  }
  lastKeystroke = now;
}

function noteLatency(ms) {
  latency = latencyKnown ? average(latency, ms) : ms;
  latencyKnown = true;
}

function suggestPause() {
  const pause = Math.max(1.5 * typingGap, latency / 2);
  return Math.round(Math.min(PAUSE.max, Math.max(PAUSE.min, pause)));
}

function cancelSuggestTimer() {
  clearTimeout(suggestTimer);
  suggestTimer = null;
}

// After each keystroke that closed (or found no) list: (re)start the pause.
function scheduleSuggest() {
  cancelSuggestTimer();
  if (!form.elements.suggest_while_typing.checked) return;
  const pause = suggestPause();
  pauseOutput.value = `${pause} ms`;
  pauseOutput.dataset.ms = String(pause);
  suggestTimer = setTimeout(suggestAfterPause, pause);
}

// Not when the document (and caret) is what was last asked for, nor over an open list.
function suggestAfterPause() {
  suggestTimer = null;
  const unchanged = lastAsked !== null && lastAsked.value === editor.value
    && lastAsked.caret === editor.selectionStart;
  if (unchanged || !list.hidden || inFlight || document.activeElement !== editor) return;
  requestSuggestions();
}

// ---- keyboard and input -----------------------------------------------------------

editor.addEventListener("keydown", (event) => {
  const open = !list.hidden;
  const leaving = leaveOnTab;
  leaveOnTab = false;
  if (event.key === "Tab" && !event.shiftKey && !event.altKey && !event.ctrlKey) {
    if (leaving) return;  // let the browser move focus to the settings
    event.preventDefault();  // Tab asks for suggestions (again, if the list is open)
    requestSuggestions();
  } else if (open && (event.key === "ArrowDown" || event.key === "ArrowUp")) {
    event.preventDefault();
    select(selected + (event.key === "ArrowDown" ? 1 : -1));
  } else if (open && event.key === "Enter") {
    event.preventDefault();
    choose(selected);
  } else if (event.key === "Escape") {
    leaveOnTab = !open && !inFlight;
    cancelSuggestTimer();
    abortInFlight();
    if (open) report("dismissed");
    closeList();
  }
});

editor.addEventListener("input", () => {
  saveDocument();
  noteKeystroke();
  if (!list.hidden && typeThrough()) return;  // the open list follows the typing
  abortInFlight();  // the context changed: whatever is coming is stale
  if (!list.hidden) report("dismissed");  // typed on past every suggestion
  closeList();
  scheduleSuggest();
});

editor.addEventListener("blur", () => setTimeout(() => {
  if (document.activeElement !== editor) closeList();
}, 150));

form.addEventListener("change", () => {
  saveSettings();
  if (!form.elements.suggest_while_typing.checked) cancelSuggestTimer();
});
apiKeyInput.addEventListener("change", () => {
  saveApiKey();
  showStatus("");
  loadModels(modelSelect.value || preferredModel);  // the list a missing key kept empty
});
form.addEventListener("submit", (event) => event.preventDefault());

// ---- start ------------------------------------------------------------------------

editor.value = localStorage.getItem(STORE.document) || "";
editor.setSelectionRange(editor.value.length, editor.value.length);
editor.focus();
apiKeyInput.value = localStorage.getItem(STORE.apiKey) || "";
preferredModel = restoreSettings();
loadModels(preferredModel);

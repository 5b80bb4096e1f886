// The examiner page: plain script over the REST API (no build step). Images and the PDF are fetched
// with the API key header and shown from blob URLs, so the key never appears in a URL.
"use strict";
const $ = (id) => document.getElementById(id);
const keyInput = $("api-key");
keyInput.value = sessionStorage.getItem("handclip-key") || "";
keyInput.addEventListener("change", () => sessionStorage.setItem("handclip-key", keyInput.value.trim()));
let queryFile = null;

// Names come from folders and uploads: control, bidirectional-override and other invisible characters are
// shown as \u.... escapes (as the command line and the PDF show them), so a name cannot reorder or hide
// the text around it.
function shown(text) {
  return String(text).replace(/(?! )[\p{C}\p{Z}]/gu,
    (ch) => `\\u${ch.codePointAt(0).toString(16).padStart(4, "0")}`);
}

function headers() { return { "X-API-Key": keyInput.value.trim() }; }

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function status(id, text, isError = false) {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function blobUrl(path) {
  return URL.createObjectURL(await (await api(path)).blob());
}

function setQuery(file) {
  if (!file) return;
  queryFile = file;
  const preview = $("query-preview");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("search-button").disabled = false;
  status("search-status", `query: ${shown(file.name)}`);
  queryPrep.load(file).catch(() => status("search-status", `${shown(file.name)}: the page cannot show this ` +
    "format to crop it; it is searched as it is", true));
}

const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  setQuery(e.dataTransfer.files[0]);
});
$("query-file").addEventListener("change", (e) => setQuery(e.target.files[0]));

// Every number's wording comes from the service (handclip.forensic.reading), as the PDF and the command
// line give it: the page only lays it out.
function weight(c) {
  if (!c.words || !c.words.lr) return "";
  return c.words.lr + (c.at_bound ? `, at the ${c.at_bound} bound` : "");
}

function statementBox(text) {
  const box = document.createElement("details");
  box.className = "suggested";
  const summary = document.createElement("summary");
  summary.textContent = "Suggested statement";
  const body = document.createElement("p");
  body.textContent = shown(text);
  const copy = document.createElement("button");
  copy.type = "button";
  copy.textContent = "Copy";
  copy.addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText(body.textContent));
  box.append(summary, body, copy);
  return box;
}

// A candidate opens the side-by-side comparison (compare.js) when clicked, or by its Compare button.
function candidateItem(c, found) {
  const by = found.by;
  const li = document.createElement("li");
  li.className = "candidate";
  li.dataset.identity = c.identity;
  li.dataset.rank = c.rank;
  li.title = "click to compare with the query side by side";
  const rank = document.createElement("span");
  rank.className = "rank";
  rank.textContent = c.rank;
  const img = document.createElement("img");
  img.alt = shown(c.name);
  if (c.thumbnail) blobUrl(c.thumbnail).then((url) => { img.src = url; }).catch(() => {});
  const text = document.createElement("div");
  const who = document.createElement("div");
  who.className = "identity";
  who.textContent = shown(c.identity);
  const score = document.createElement("div");
  score.className = "weight";
  score.textContent = [`score ${c.score.toFixed(4)}`, weight(c)].filter(Boolean).join(" · ");
  const verbal = document.createElement("div");
  verbal.className = "verbal";
  verbal.textContent = c.verbal || "";
  const detail = document.createElement("div");
  detail.className = "muted";
  detail.textContent = by === "identity" ? `${c.words.matched}; best: ${shown(c.name)}` : shown(c.name);
  text.append(who, score, verbal, detail);
  if (c.words && c.words.bound) {
    const bound = document.createElement("div");
    bound.className = "muted bound";
    bound.textContent = c.words.bound;
    text.append(bound);
  }
  if (c.words && c.words.statement) text.append(statementBox(c.words.statement));
  const compare = document.createElement("button");
  compare.type = "button";
  compare.className = "compare-button";
  compare.textContent = "Compare side by side";
  compare.addEventListener("click", (e) => { e.stopPropagation(); comparison.open(found, c, compare); });
  text.append(compare);
  li.addEventListener("click", (e) => {
    if (!e.target.closest("details, button, a")) comparison.open(found, c, compare);
  });
  li.append(rank, img, text);
  return li;
}

// One search's answer on the page: a fresh search's, or one reopened from a case (cases.js).
function showAnswer(found) {
  const list = $("candidates");
  list.replaceChildren(...found.candidates.map((c) => candidateItem(c, found)));
  const hypotheses = found.propositions ? ` Hp: ${found.propositions.hp} Hd: ${found.propositions.hd}` : "";
  // The calibration line comes as text from the service (reading.calibration_note): the Cllr of the
  // score kind this search used, rounded as the PDF and the command line give it, and what Cllr means.
  const cal = found.calibration;
  const calibration = cal ? ` Calibration SHA-256 ${cal.sha256.slice(0, 16)}...: ${found.reading.calibration}` : "";
  // The aspects compared (a search that stated them) and the aspect head's doubt, when it has one.
  const a = found.aspects;
  const aspects = a ? ` Aspects: query ${a.query || "not stated"}${a.mirrored ? " (compared as the other hand)" : ""}` +
    ` against gallery ${a.gallery || "every aspect"}.` : "";
  const check = found.queries[0].aspect_check;
  const warning = check && check.warning ? ` Warning: ${check.warning}.` : "";
  $("statement").textContent = `${found.statement} Score: ${found.score}. ${found.reading.score}` +
    `${aspects}${warning}${hypotheses}${calibration}`;
  const answer = $("open-set");
  answer.hidden = !found.open_set;
  answer.textContent = found.open_set ? found.open_set.answer : "";
  answer.classList.toggle("none-reached", Boolean(found.open_set && found.open_set.none_reached));
  const record = $("record");
  record.textContent = `Audit record ${found.audit.seq} (SHA-256 ${found.audit.hash.slice(0, 16)}...); ` +
    `keep ${found.audit.anchor} to check the log later (handclip audit verify --expect). `;
  if (found.report) {
    // Downloaded rather than opened: the page's Content-Security-Policy allows no plugin to show it.
    const link = document.createElement("a");
    link.id = "report-link";
    link.href = "#";
    link.textContent = "Download the case report (PDF)";
    link.addEventListener("click", async (ev) => {
      ev.preventDefault();
      const save = document.createElement("a");
      save.href = await blobUrl(found.report);
      save.download = `handclip-record-${found.audit.seq}.pdf`;
      save.click();
    });
    record.append(link);
  }
  $("results").hidden = false;
}

$("search-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (!queryFile) return;
  const form = new FormData();
  form.append("image", queryFile);
  form.append("top_k", $("top-k").value);
  form.append("by", $("by").value);
  form.append("report", $("want-report").checked ? "true" : "false");
  if ($("aspect").value) form.append("aspect", $("aspect").value);
  if ($("mirror-aspect").checked) form.append("mirror_aspect", "true");
  if ($("case-id").value.trim()) form.append("case_id", $("case-id").value.trim());
  if ($("threshold-lr").value.trim()) form.append("threshold_lr", $("threshold-lr").value.trim());
  for (const [name, value] of Object.entries(queryPrep.fields())) form.append(name, value);
  status("search-status", "searching...");
  $("search-button").disabled = true;
  try {
    const found = await (await api("/api/v1/search", { method: "POST", body: form })).json();
    showAnswer(found);
    const query = found.queries[0];
    const prepared = query.prepared ? `; prepared (${queryPrep.describe()}) SHA-256 ` +
      `${query.prepared.sha256.slice(0, 16)}...` : "";
    status("search-status", `${found.candidates.length} candidate(s) for ${shown(query.name)} ` +
      `(SHA-256 ${query.sha256.slice(0, 16)}...${prepared})`);
  } catch (err) {
    status("search-status", err.message, true);
  } finally {
    $("search-button").disabled = false;
  }
});

$("enrol-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const files = [...$("enrol-folder").files, ...$("enrol-files").files].filter((f) => /\.(jpe?g|png|webp|bmp|tiff?)$/i.test(f.name));
  if (!files.length) { status("enrol-status", "choose a folder or images to enrol", true); return; }
  const form = new FormData();
  form.append("identity", $("identity").value.trim());
  if ($("enrol-aspect").value) form.append("aspect", $("enrol-aspect").value);
  for (const f of files) form.append("images", f, f.name);
  status("enrol-status", `enrolling ${files.length} image(s)...`);
  try {
    const done = await (await api("/api/v1/enrol", { method: "POST", body: form })).json();
    const others = done.other_identity.map((o) =>
      `${shown(o.name)} is already enrolled as ${shown(o.enrolled_identity)} (${shown(o.enrolled_name)})`);
    status("enrol-status", `${shown(done.identity)}: ${done.added} added, ${done.already_enrolled} already enrolled; ` +
      `gallery ${done.gallery_images} images of ${done.gallery_identities} people (audit record ${done.record})` +
      (others.length ? `. Not enrolled: ${others.join("; ")}` : ""));
    refreshHealth();
  } catch (err) {
    status("enrol-status", err.message, true);
  }
});

async function refreshHealth() {
  try {
    const h = await (await fetch("/api/v1/health")).json();
    $("health").textContent = `${h.images} images of ${h.identities} people` + (h.calibrated ? ", calibrated" : "");
  } catch (e) { $("health").textContent = "service unreachable"; }
}
refreshHealth();

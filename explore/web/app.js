// altlake explore: a LAION-style search page over the clip back protocol served next to it.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, results: [], hidden: {}, page: 0, requested: 0, indices: {} };
const MAX_RESULTS = 10000;

function pageSize() { return parseInt($("page-size").value, 10); }
function modality() { return document.querySelector("input[name=modality]:checked").value; }

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function queryFields() {
  const text = $("query").value.trim();
  const url = $("image-url").value.trim();
  if (state.image) return { image: state.image };
  if (text) return { text };
  if (url) return { image_url: url };
  return null;
}

async function search(page = 0) {
  const fields = queryFields();
  if (!fields) { setStatus("Type a query, drop an image, or give an image URL."); return; }
  const wanted = Math.min(pageSize() * (page + 1), MAX_RESULTS);
  const body = {
    ...fields,
    modality: modality(),
    num_images: wanted,
    num_result_ids: Math.min(wanted * 3, MAX_RESULTS),
    indice_name: $("index").value || null,
    use_mclip: $("mclip").checked,
    use_safety_model: $("safe").checked,
    hide_duplicate_urls: $("hide-dup-urls").checked,
    deduplicate: $("hide-near-dups").checked,
  };
  setStatus("Searching…");
  shareInUrl(fields);
  try {
    const response = await fetch("/knn-service", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const payload = await response.json();
    if (!response.ok) { showError(payload.error || `error ${response.status}`); return; }
    state.hidden = parseHidden(response.headers.get("X-Altlake-Hidden"));
    state.results = payload;
    state.requested = wanted;
    state.page = page;
    render();
  } catch (err) {
    showError(`Search failed: ${err}`);
  }
}

// An error replaces the previous query's results: they would read as answers to this one.
function showError(message) {
  state.results = [];
  state.hidden = {};
  state.requested = 0;
  state.page = 0;
  render();
  setStatus(message, true);
}

// The query lives in the page's URL, so a search can be shared or bookmarked (uploads excepted).
function shareInUrl(fields) {
  const params = new URLSearchParams();
  if (fields.text) params.set("q", fields.text);
  if (fields.image_url) params.set("image_url", fields.image_url);
  if ($("index").value) params.set("index", $("index").value);
  if (modality() !== "image") params.set("modality", modality());
  if (!$("safe").checked) params.set("safe", "0");
  if (minSimilarity() > -1) params.set("min_similarity", String(minSimilarity()));
  history.replaceState(null, "", params.toString() ? `?${params}` : location.pathname);
}

function restoreFromUrl() {
  const params = new URLSearchParams(location.search);
  if (params.has("index")) $("index").value = params.get("index");
  if (params.get("modality") === "text") document.querySelector("input[name=modality][value=text]").checked = true;
  if (params.get("safe") === "0") $("safe").checked = false;
  if (params.has("min_similarity")) $("min-similarity").value = params.get("min_similarity");
  $("query").value = params.get("q") || "";
  $("image-url").value = params.get("image_url") || "";
  if (queryFields()) search(0);
}

// "unsafe=3,duplicate_urls=1" -> {unsafe: 3, duplicate_urls: 1}: what the server's filters hid.
function parseHidden(header) {
  const counts = {};
  for (const part of (header || "").split(",")) {
    const [name, n] = part.split("=");
    if (name && Number(n) > 0) counts[name] = Number(n);
  }
  return counts;
}

const HIDDEN_LABELS = {
  unsafe: "unsafe (safe mode)", duplicate_urls: "duplicate URL", near_duplicates: "near-duplicate",
  watermarked: "watermarked", below_cutoff: "below the similarity cutoff",
};

function hiddenNote(counts) {
  const parts = Object.entries(counts).filter(([, n]) => n > 0).map(([name, n]) => `${n} ${HIDDEN_LABELS[name] || name}`);
  return parts.length ? ` (hidden: ${parts.join(", ")})` : "";
}

function minSimilarity() {
  const value = parseFloat($("min-similarity").value);
  return Number.isFinite(value) ? value : -1;
}

function searchLike(item) {
  clearImage();
  $("query").value = "";
  $("image-url").value = item.url;
  search(0);
}

function details(item) {
  const parts = [];
  const number = (v) => (typeof v === "number" ? v.toFixed(2) : null);
  if (number(item.punsafe) !== null) parts.push(`punsafe ${number(item.punsafe)}`);
  if (number(item.pwatermark) !== null) parts.push(`pwatermark ${number(item.pwatermark)}`);
  if (item.language) parts.push(item.language);
  if (item.width && item.height) parts.push(`${item.width}×${item.height}`);
  return parts.join(" · ");
}

function placeholder(img) {
  const box = document.createElement("div");
  box.className = "placeholder";
  box.textContent = "image unavailable: its host did not serve it";
  img.replaceWith(box);
}

function render() {
  const grid = $("results");
  grid.replaceChildren();
  const start = state.page * pageSize();
  const { kept, hidden } = visible();
  const shown = kept.slice(start, start + pageSize());
  for (const item of shown) {
    const card = document.createElement("figure");
    card.className = "result";
    card.dataset.id = item.id;
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = item.caption || "";
    img.title = "search for pictures like this one";
    img.addEventListener("error", () => placeholder(img));
    img.addEventListener("click", () => searchLike(item));
    img.src = item.url;
    const caption = document.createElement("figcaption");
    caption.className = "caption" + ($("full-captions").checked ? "" : " short");
    caption.textContent = item.caption || "";
    caption.title = item.caption || "";
    const similarity = document.createElement("div");
    similarity.className = "similarity";
    similarity.textContent = `similarity ${item.similarity.toFixed(3)}`;
    const meta = document.createElement("div");
    meta.className = "details";
    meta.textContent = details(item);
    const links = document.createElement("div");
    links.className = "links";
    const like = document.createElement("button");
    like.type = "button";
    like.className = "like";
    like.textContent = "similar";
    like.addEventListener("click", () => searchLike(item));
    const source = document.createElement("a");
    source.className = "source";
    source.href = item.url;
    source.target = "_blank";
    source.rel = "noopener noreferrer";
    source.textContent = "source";
    links.append(like, source);
    card.append(img, caption, similarity, meta, links);
    grid.append(card);
  }
  const more = state.results.length >= state.requested && state.requested > 0 && state.requested < MAX_RESULTS;
  $("prev").disabled = state.page === 0;
  $("next").disabled = !more;
  $("page-info").textContent = shown.length ? `page ${state.page + 1}` : "";
  $("export-json").disabled = $("export-csv").disabled = kept.length === 0;
  const note = hiddenNote(hidden);
  setStatus(shown.length ? `${kept.length} results${note}` : `No results${note || " (try turning filters off)"}.`);
  applyDisplay();
}

// The results the page's own filters keep (cutoff, watermark), and what every filter hid.
function visible() {
  const cutoff = minSimilarity();
  const hidden = { ...state.hidden, watermarked: 0, below_cutoff: 0 };
  const kept = state.results.filter((item) => {
    if ($("hide-watermarked").checked && typeof item.pwatermark === "number" && item.pwatermark > 0.5) {
      hidden.watermarked += 1;
      return false;
    }
    if (item.similarity < cutoff) { hidden.below_cutoff += 1; return false; }
    return true;
  });
  return { kept, hidden };
}

function applyDisplay() {
  const grid = $("results");
  grid.classList.toggle("hide-images", !$("show-images").checked);
  grid.classList.toggle("hide-captions", !$("show-captions").checked);
  grid.classList.toggle("hide-similarity", !$("show-similarity").checked);
  for (const el of grid.querySelectorAll(".caption")) el.classList.toggle("short", !$("full-captions").checked);
}

function download(name, type, text) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], { type }));
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

function exportRows() {
  // img2dataset's column names first (URL, TEXT), then everything the service returned.
  return visible().kept.map(({ url, caption, ...rest }) => ({ URL: url, TEXT: caption, ...rest }));
}

function csvCell(value) {
  if (value === null || value === undefined) return "";
  const text = String(value);
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function exportCsv() {
  const rows = exportRows();
  const columns = [...new Set(rows.flatMap((row) => Object.keys(row)))];
  const lines = [columns.join(","), ...rows.map((row) => columns.map((c) => csvCell(row[c])).join(","))];
  download("altlake-results.csv", "text/csv", lines.join("\n") + "\n");
}

function useImage(file) {
  if (!file || !file.type.startsWith("image/")) { setStatus("That is not an image file.", true); return; }
  const reader = new FileReader();
  reader.onload = () => {
    state.image = reader.result;  // a data: URL; the service accepts that prefix
    $("query-image").hidden = false;
    $("query-image").querySelector("img").src = reader.result;
    $("query").value = "";
    $("image-url").value = "";
    search(0);
  };
  reader.readAsDataURL(file);
}

function clearImage() {
  state.image = null;
  $("query-image").hidden = true;
}

async function loadIndices() {
  const names = await (await fetch("/indices-list")).json();
  for (const name of names) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    $("index").append(option);
  }
  if (new URLSearchParams(location.search).has("index")) $("index").value = new URLSearchParams(location.search).get("index");
  await describeIndex();
  restoreFromUrl();
}

async function describeIndex() {
  const name = $("index").value;
  if (!name) return;
  const info = await (await fetch(`/indices/${encodeURIComponent(name)}`)).json();
  $("mclip").disabled = !info.multilingual;
  $("safe").disabled = !info.safe_mode;  // a release without punsafe scores cannot filter: the server refuses safe mode
  if (!info.safe_mode) $("safe").checked = false;
  $("index-info").textContent = `${info.rows} pairs, ${info.dim}-d, ${info.clip_model || "no CLIP model: embedding queries only"}`;
  const notice = info.deprecated;
  $("deprecated").hidden = !notice;
  if (notice) {
    const successor = notice.superseded_by ? ` Use ${notice.superseded_by} instead.` : "";
    $("deprecated").textContent = `This release is deprecated (${notice.deprecated_at}): ${notice.reason}.${successor}`;
  }
}

$("search-form").addEventListener("submit", (event) => { event.preventDefault(); search(0); });
$("query").addEventListener("input", () => { clearImage(); $("image-url").value = ""; });
$("image-url").addEventListener("input", () => { clearImage(); $("query").value = ""; });
$("pick-file").addEventListener("click", () => $("file").click());
$("file").addEventListener("change", () => useImage($("file").files[0]));
$("clear-image").addEventListener("click", clearImage);
$("drop").addEventListener("dragover", (event) => { event.preventDefault(); $("drop").classList.add("over"); });
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (event) => {
  event.preventDefault();
  $("drop").classList.remove("over");
  useImage(event.dataTransfer.files[0]);
});
$("prev").addEventListener("click", () => { state.page -= 1; render(); });
$("next").addEventListener("click", () => search(state.page + 1));
$("export-json").addEventListener("click", () => download("altlake-results.json", "application/json", JSON.stringify(exportRows(), null, 2)));
$("export-csv").addEventListener("click", exportCsv);
$("index").addEventListener("change", async () => { await describeIndex(); search(0); });  // options first: safe mode may not apply
for (const id of ["safe", "hide-dup-urls", "hide-near-dups", "mclip", "page-size"]) {
  $(id).addEventListener("change", () => { if (queryFields()) search(0); });
}
for (const input of document.querySelectorAll("input[name=modality]")) {
  input.addEventListener("change", () => { if (queryFields()) search(0); });
}
$("min-similarity").addEventListener("change", () => { state.page = 0; render(); if (queryFields()) shareInUrl(queryFields()); });
$("hide-watermarked").addEventListener("change", () => { state.page = 0; render(); });
for (const id of ["show-images", "show-captions", "full-captions", "show-similarity"]) {
  $(id).addEventListener("change", applyDisplay);
}
loadIndices().catch((err) => setStatus(`Could not load the indices: ${err}`, true));

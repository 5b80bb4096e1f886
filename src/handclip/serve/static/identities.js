// The identity browser on the examiner page: the enrolled identities with image counts
// (GET /api/v1/identities), one identity's photos (GET /api/v1/identities/ID, thumbnails fetched with the
// key) and, for a key with the enrol role, redaction after a confirmation with a recorded reason
// (POST /api/v1/identities/ID/redact). Uses app.js's $, api(), blobUrl(), status(), shown(), refreshHealth().
"use strict";

let selectedIdentity = null;

async function loadIdentities() {
  try {
    const found = await (await api("/api/v1/identities")).json();
    const items = found.identities.map((p) => {
      const li = document.createElement("li");
      li.dataset.identity = p.identity;
      const name = document.createElement("span");
      name.textContent = shown(p.identity);
      const count = document.createElement("span");
      count.className = "muted";
      count.textContent = `${p.images} image${p.images === 1 ? "" : "s"}`;
      li.append(name, count);
      li.addEventListener("click", () => showIdentity(p.identity, found.can_redact));
      return li;
    });
    $("identity-list").replaceChildren(...items);
    status("identities-status", `${found.identities.length} identities, ${found.images} images in the gallery` +
      (found.redacted ? ` (${found.redacted} redacted identit${found.redacted === 1 ? "y" : "ies"} not shown)` : ""));
  } catch (err) {
    status("identities-status", err.message, true);
  }
}

async function showIdentity(identity, canRedact) {
  selectedIdentity = identity;
  for (const li of $("identity-list").children) li.classList.toggle("selected", li.dataset.identity === identity);
  try {
    const found = await (await api(`/api/v1/identities/${encodeURIComponent(identity)}`)).json();
    $("identity-name").textContent = shown(identity);
    $("identity-count").textContent = `${found.images.length} enrolled image(s)`;
    $("redact-button").hidden = !canRedact;
    const figures = await Promise.all(found.images.map(async (image) => {
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      img.alt = shown(image.name);
      img.title = `${shown(image.name)}\nSHA-256 ${image.sha256}`;
      if (image.thumbnail) img.src = await blobUrl(`${image.thumbnail}?size=240`);
      const caption = document.createElement("figcaption");
      caption.textContent = shown(image.name).slice(-28);
      figure.append(img, caption);
      return figure;
    }));
    $("identity-thumbs").replaceChildren(...figures);
    $("identity-detail").hidden = false;
  } catch (err) {
    status("identities-status", err.message, true);
  }
}

$("identities-load").addEventListener("click", loadIdentities);

$("redact-button").addEventListener("click", () => {
  $("redact-name").textContent = shown(selectedIdentity);
  $("redact-reason").value = "";
  $("redact-dialog").showModal();
});

$("redact-cancel").addEventListener("click", () => $("redact-dialog").close());

$("redact-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const reason = $("redact-reason").value.trim();
  if (!reason) { $("redact-reason").focus(); return; }
  $("redact-dialog").close();
  const identity = selectedIdentity;
  try {
    const done = await (await api(`/api/v1/identities/${encodeURIComponent(identity)}/redact`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ reason }),
    })).json();
    $("identity-detail").hidden = true;
    await loadIdentities();
    status("identities-status", `redacted ${shown(identity)}: its ${done.images} image(s) are kept but no longer ` +
      `searched; ${done.identities_left} identities remain (audit record ${done.record}, anchor ${done.anchor})`);
    refreshHealth();
  } catch (err) {
    status("identities-status", err.message, true);
  }
});

// The side-by-side comparison: the query the model searched beside a candidate's best-matching enrolled
// image, both at full resolution, zoomed (wheel or buttons) and panned (drag) together, with a strip of
// the candidate's other enrolled images. Images come through the API with the key header as blob URLs
// (GET /api/v1/searches/RECORD/query, GET /api/v1/images/SHA256). Uses app.js's api(), blobUrl(), shown().
"use strict";

const comparison = (() => {
  const view = { scale: 1, x: 0, y: 0 };
  const MIN_SCALE = 1;
  const MAX_SCALE = 32;
  let urls = [];
  let opener = null;
  let drag = null;

  const panes = () => [$("compare-query"), $("compare-candidate")];

  // One transform for both panes: the same part of each image is always in view.
  function apply() {
    const transform = `translate(${view.x}px, ${view.y}px) scale(${view.scale})`;
    for (const img of panes()) {
      img.style.transform = transform;
      img.classList.toggle("pixels", view.scale >= 4);  // show the recorded pixels, not a blur of them
    }
    $("zoom-level").textContent = `${Math.round(view.scale * 100)}%`;
  }

  // Zoom by `factor` about the point (px, py) of the viewport, measured from its centre.
  function zoom(factor, px = 0, py = 0) {
    const scale = Math.min(MAX_SCALE, Math.max(MIN_SCALE, view.scale * factor));
    const ratio = scale / view.scale;
    view.x = px - (px - view.x) * ratio;
    view.y = py - (py - view.y) * ratio;
    view.scale = scale;
    if (scale === MIN_SCALE) { view.x = 0; view.y = 0; }
    apply();
  }

  function reset() { Object.assign(view, { scale: 1, x: 0, y: 0 }); apply(); }

  async function show(img, path) {
    img.removeAttribute("src");
    const url = await blobUrl(path);
    urls.push(url);
    img.src = url;
  }

  function candidateCaption(c, image) {
    const which = image.sha256 === c.sha256 ? "best-matching image" : "another enrolled image (not the one scored)";
    return `Rank ${c.rank}, ${shown(c.identity)}, ${which}: ${shown(image.name)} \u00b7 SHA-256 ${image.sha256}`;
  }

  function putRight(c, image) {
    $("caption-candidate").textContent = candidateCaption(c, image);
    for (const button of $("compare-strip").querySelectorAll("button")) {
      button.classList.toggle("selected", button.dataset.sha256 === image.sha256);
    }
    return show($("compare-candidate"), `/api/v1/images/${image.sha256}`);
  }

  async function strip(c) {
    const box = $("compare-strip");
    box.replaceChildren();
    const person = await (await api(`/api/v1/identities/${encodeURIComponent(c.identity)}`)).json();
    $("strip-title").textContent = `Enrolled images of ${shown(c.identity)} (${person.images.length}); ` +
      "click one to compare it";
    for (const image of person.images) {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.sha256 = image.sha256;
      button.title = `${shown(image.name)} (SHA-256 ${image.sha256})`;
      button.classList.toggle("selected", image.sha256 === c.sha256);
      const thumb = document.createElement("img");
      thumb.alt = shown(image.name);
      blobUrl(image.thumbnail).then((url) => { urls.push(url); thumb.src = url; }).catch(() => {});
      button.append(thumb);
      button.addEventListener("click", () => putRight(c, image)
        .catch((err) => status("compare-status", err.message, true)));
      box.append(button);
    }
  }

  async function open(found, c, from) {
    opener = from || null;
    close(false);
    reset();
    const query = found.queries[0];
    const prepared = Boolean(query.prepared);
    $("compare-title").textContent = `${shown(query.name)} beside rank ${c.rank}, ${shown(c.identity)}`;
    $("caption-query").textContent = `${prepared ? "Prepared query (what the model searched)" : "Query as received"}` +
      `: ${shown(query.name)} \u00b7 SHA-256 ${prepared ? query.prepared.sha256 : query.sha256}`;
    $("compare-figures").textContent = [`score ${c.score.toFixed(4)} (a similarity, not a probability)`,
      c.words && c.words.lr, c.verbal].filter(Boolean).join(" \u00b7 ");
    status("compare-status", "");
    $("compare").hidden = false;
    $("compare-close").focus();
    try {
      await Promise.all([show($("compare-query"), `/api/v1/searches/${found.record}/query`),
        putRight(c, { name: c.name, sha256: c.sha256 }), strip(c)]);
    } catch (err) {
      status("compare-status", err.message, true);
    }
  }

  function close(restoreFocus = true) {
    $("compare").hidden = true;
    for (const url of urls) URL.revokeObjectURL(url);
    urls = [];
    if (restoreFocus && opener) opener.focus();
  }

  function centred(event, viewport) {
    const box = viewport.getBoundingClientRect();
    return [event.clientX - box.left - box.width / 2, event.clientY - box.top - box.height / 2];
  }

  for (const viewport of document.querySelectorAll("#compare .viewport")) {
    viewport.addEventListener("wheel", (e) => {
      e.preventDefault();
      zoom(e.deltaY < 0 ? 1.25 : 0.8, ...centred(e, viewport));
    }, { passive: false });
    viewport.addEventListener("pointerdown", (e) => {
      drag = { x: e.clientX, y: e.clientY };
      viewport.setPointerCapture(e.pointerId);
      viewport.classList.add("dragging");
    });
    viewport.addEventListener("pointermove", (e) => {
      if (!drag) return;
      view.x += e.clientX - drag.x;
      view.y += e.clientY - drag.y;
      drag = { x: e.clientX, y: e.clientY };
      apply();
    });
    const stop = () => { drag = null; viewport.classList.remove("dragging"); };
    viewport.addEventListener("pointerup", stop);
    viewport.addEventListener("pointercancel", stop);
  }
  $("zoom-in").addEventListener("click", () => zoom(1.5));
  $("zoom-out").addEventListener("click", () => zoom(1 / 1.5));
  $("zoom-reset").addEventListener("click", reset);
  $("compare-close").addEventListener("click", () => close());
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !$("compare").hidden) close();
  });
  return { open, close };
})();

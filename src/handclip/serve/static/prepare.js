// Query preparation on the examiner page: a crop box dragged on the original, quarter turns and a fine angle,
// and a mirror, previewed in the order the service applies them (handclip.data.query_transform): the EXIF
// orientation, then the crop, the clockwise rotation, the mirror. The page only previews: the service
// prepares the image it searches from the original and the fields this sends (crop, rotate, mirror).
"use strict";
const queryPrep = (() => {
  const MIN_SIDE = 16;  // the smallest crop the service accepts
  const SHOWN = 320;    // the longer side of each canvas, in CSS pixels
  const el = (id) => document.getElementById(id);
  const state = { bitmap: null, scale: 1, crop: null, quarter: 0, drag: null };

  function angle() {
    const fine = Number(el("fine-angle").value) || 0;
    return (((state.quarter % 4) + 4) % 4) * 90 + fine;
  }

  function toImage(event) {
    const canvas = el("crop-canvas");
    const rect = canvas.getBoundingClientRect();
    const scale = state.scale * canvas.clientWidth / canvas.width;  // the canvas may be shown smaller
    const clamp = (v, hi) => Math.min(Math.max(v, 0), hi);
    return [clamp((event.clientX - rect.left - canvas.clientLeft) / scale, state.bitmap.width),
            clamp((event.clientY - rect.top - canvas.clientTop) / scale, state.bitmap.height)];
  }

  function drawOriginal() {
    const canvas = el("crop-canvas");
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;  // small photos stay sharp enough to place the box
    ctx.drawImage(state.bitmap, 0, 0, canvas.width, canvas.height);
    const box = state.drag ? state.drag.box : state.crop;
    if (box) {
      ctx.strokeStyle = "#dc0000";
      ctx.lineWidth = 2;
      ctx.strokeRect(box[0] * state.scale + 1, box[1] * state.scale + 1, box[2] * state.scale - 2,
                     box[3] * state.scale - 2);
    }
  }

  function drawPrepared() {
    const [x, y, w, h] = state.crop || [0, 0, state.bitmap.width, state.bitmap.height];
    const radians = angle() * Math.PI / 180;
    const cos = Math.abs(Math.cos(radians)), sin = Math.abs(Math.sin(radians));
    const width = w * cos + h * sin, height = w * sin + h * cos;
    const scale = SHOWN / Math.max(width, height);
    const canvas = el("prepared-preview");
    canvas.width = Math.max(1, Math.round(width * scale));
    canvas.height = Math.max(1, Math.round(height * scale));
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";  // the corners a fine angle uncovers, white as the service fills them
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.imageSmoothingEnabled = false;
    ctx.translate(canvas.width / 2, canvas.height / 2);
    ctx.scale(el("mirror").checked ? -scale : scale, scale);  // the mirror last: outermost
    ctx.rotate(radians);  // clockwise: the canvas's y axis points down
    ctx.drawImage(state.bitmap, x, y, w, h, -w / 2, -h / 2, w, h);
    el("transform-text").textContent = describe();
  }

  function describe() {
    const parts = [state.crop ? `crop ${state.crop.join(",")} px` : "no crop"];
    const turn = angle();
    if (turn) parts.push(`rotate ${turn}° clockwise`);
    if (el("mirror").checked) parts.push("mirrored");
    return parts.join("; ");
  }

  function redraw() { if (state.bitmap) { drawOriginal(); drawPrepared(); } }

  async function load(file) {
    state.bitmap = await createImageBitmap(file);  // the EXIF orientation applied, as the service applies it
    state.crop = null;
    state.quarter = 0;
    el("fine-angle").value = "0";
    el("mirror").checked = false;
    state.scale = SHOWN / Math.max(state.bitmap.width, state.bitmap.height);
    const canvas = el("crop-canvas");
    canvas.width = Math.round(state.bitmap.width * state.scale);
    canvas.height = Math.round(state.bitmap.height * state.scale);
    el("prepare").hidden = false;
    redraw();
  }

  const crop = el("crop-canvas");
  crop.addEventListener("pointerdown", (e) => {
    if (!state.bitmap) return;
    crop.setPointerCapture(e.pointerId);
    state.drag = { from: toImage(e), box: null };
  });
  crop.addEventListener("pointermove", (e) => {
    if (!state.drag) return;
    const [x0, y0] = state.drag.from, [x1, y1] = toImage(e);
    const x = Math.floor(Math.min(x0, x1)), y = Math.floor(Math.min(y0, y1));
    state.drag.box = [x, y, Math.ceil(Math.max(x0, x1)) - x, Math.ceil(Math.max(y0, y1)) - y];
    drawOriginal();
  });
  crop.addEventListener("pointerup", () => {
    const box = state.drag && state.drag.box;
    state.drag = null;
    if (box && box[2] >= MIN_SIDE && box[3] >= MIN_SIDE) state.crop = box;  // a click or a sliver keeps the old box
    redraw();
  });
  el("rotate-left").addEventListener("click", () => { state.quarter -= 1; redraw(); });
  el("rotate-right").addEventListener("click", () => { state.quarter += 1; redraw(); });
  el("fine-angle").addEventListener("input", redraw);
  el("mirror").addEventListener("change", redraw);
  el("crop-clear").addEventListener("click", () => { state.crop = null; redraw(); });

  // The form fields the search sends: only those that change the photo.
  function fields() {
    const out = {};
    if (state.crop) out.crop = state.crop.join(",");
    if (angle()) out.rotate = String(angle());
    if (el("mirror").checked) out.mirror = "true";
    return out;
  }

  return { load, fields, describe };
})();

"use strict";
// dinolab explorer: everything it shows is embedded in #explorer-data (see explorer.py for the layout).
(() => {
  const data = JSON.parse(document.getElementById("explorer-data").textContent);
  const [gh, gw] = data.grid;
  const [height, width] = data.image_size;
  const patches = gh * gw;
  const dim = data.dim;
  const count = data.names.length;
  const scale = Math.max(1, Math.floor(data.display_size / Math.max(height, width)));
  const cell = data.patch_size * scale;

  function bytes(b64) {
    const raw = atob(b64);
    const out = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out;
  }

  function float16(b64) {  // IEEE half floats, little-endian, to Float32Array
    const u8 = bytes(b64);
    const half = new Uint16Array(u8.buffer, 0, u8.length / 2);
    const out = new Float32Array(half.length);
    for (let i = 0; i < half.length; i++) {
      const h = half[i], sign = h & 0x8000 ? -1 : 1, exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
      out[i] = exp === 0 ? sign * frac * 2 ** -24
        : exp === 31 ? (frac ? NaN : sign * Infinity)
        : sign * (1 + frac / 1024) * 2 ** (exp - 15);
    }
    return out;
  }

  const patchFeatures = float16(data.patch_features);  // (count, patches, dim), unit norm
  const clsFeatures = float16(data.cls_features);      // (count, dim), unit norm
  const attention = bytes(data.attention);             // (count, heads + 1, patches), each map scaled to 0..255
  const pcaColours = bytes(data.pca_rgb);              // (count, patches, 3)

  // A perceptual dark-to-bright colormap (inferno's anchors), value in [0, 1] -> [r, g, b].
  const anchors = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];
  function colormap(v) {
    const x = Math.min(Math.max(v, 0), 1) * (anchors.length - 1);
    const i = Math.min(Math.floor(x), anchors.length - 2), t = x - i;
    return anchors[i].map((a, c) => Math.round(a + t * (anchors[i + 1][c] - a)));
  }

  const state = { mode: "similarity", head: data.heads, selected: null, pinned: false, similarity: null };
  const tiles = [];
  const grid = document.getElementById("grid");
  const modeSelect = document.getElementById("mode");
  const headSelect = document.getElementById("head");
  const status = document.getElementById("status");
  const neighborList = document.getElementById("neighbors");

  for (let h = 0; h <= data.heads; h++) {
    const option = document.createElement("option");
    option.value = String(h);
    option.textContent = h === data.heads ? "mean" : String(h);
    headSelect.appendChild(option);
  }
  headSelect.value = String(data.heads);

  let loaded = 0;
  data.names.forEach((name, index) => {
    const tile = document.createElement("div");
    tile.className = "tile";
    tile.id = `tile-${index}`;
    tile.dataset.index = String(index);
    tile.dataset.name = name;
    const base = document.createElement("canvas");
    const overlay = document.createElement("canvas");
    overlay.className = "overlay";
    overlay.id = `overlay-${index}`;
    for (const c of [base, overlay]) { c.width = width * scale; c.height = height * scale; }
    const label = document.createElement("div");
    label.className = "name";
    label.textContent = name;
    label.title = name;
    tile.append(base, overlay, label);
    grid.appendChild(tile);
    tiles.push({ tile, overlay });

    const img = new Image();
    img.onload = () => {
      const ctx = base.getContext("2d");
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(img, 0, 0, base.width, base.height);
      if (++loaded === count) document.body.dataset.ready = "true";
    };
    img.src = `data:image/png;base64,${data.images[index]}`;

    const patchAt = (event) => {
      const rect = overlay.getBoundingClientRect();
      const col = Math.min(gw - 1, Math.floor((event.clientX - rect.left) / cell));
      const row = Math.min(gh - 1, Math.floor((event.clientY - rect.top) / cell));
      return row * gw + col;
    };
    overlay.addEventListener("mousemove", (event) => {
      if (state.pinned || !document.getElementById("hover").checked) return;
      const patch = patchAt(event);
      if (!state.selected || state.selected.index !== index || state.selected.patch !== patch) select(index, patch);
    });
    overlay.addEventListener("click", (event) => {
      state.pinned = true;
      select(index, patchAt(event));
    });
  });

  function select(index, patch) {
    state.selected = { index, patch };
    const query = patchFeatures.subarray((index * patches + patch) * dim, (index * patches + patch + 1) * dim);
    const similarity = new Float32Array(count * patches);
    for (let k = 0; k < count * patches; k++) {
      let dot = 0;
      for (let d = 0, o = k * dim; d < dim; d++) dot += patchFeatures[o + d] * query[d];
      similarity[k] = dot;
    }
    state.similarity = similarity;
    const row = Math.floor(patch / gw), col = patch % gw;
    status.textContent = `${data.names[index]}, patch (row ${row}, col ${col})${state.pinned ? " [pinned: Esc to unpin]" : ""}`;
    document.body.dataset.selectedIndex = String(index);
    document.body.dataset.selectedPatch = String(patch);
    showNeighbors(index);
    draw();
  }

  function showNeighbors(index) {
    const query = clsFeatures.subarray(index * dim, (index + 1) * dim);
    const scores = [];
    for (let j = 0; j < count; j++) {
      if (j === index) continue;
      let dot = 0;
      for (let d = 0; d < dim; d++) dot += clsFeatures[j * dim + d] * query[d];
      scores.push([dot, j]);
    }
    scores.sort((a, b) => b[0] - a[0]);
    neighborList.replaceChildren();
    tiles.forEach(({ tile }, j) => {
      tile.classList.toggle("selected", j === index);
      tile.classList.remove("neighbor");
    });
    for (const [score, j] of scores.slice(0, data.neighbors)) {
      const item = document.createElement("li");
      item.className = "neighbor";
      item.dataset.index = String(j);
      item.dataset.score = score.toFixed(4);
      item.textContent = `${data.names[j]} (${score.toFixed(3)})`;
      item.addEventListener("click", () => tiles[j].tile.scrollIntoView({ block: "center" }));
      neighborList.appendChild(item);
      tiles[j].tile.classList.add("neighbor");
    }
  }

  function paint(ctx, patch, rgb, alpha) {
    ctx.fillStyle = `rgba(${rgb[0]}, ${rgb[1]}, ${rgb[2]}, ${alpha})`;
    ctx.fillRect((patch % gw) * cell, Math.floor(patch / gw) * cell, cell, cell);
  }

  function draw() {
    let low = Infinity;
    if (state.mode === "similarity" && state.similarity) for (const s of state.similarity) low = Math.min(low, s);
    tiles.forEach(({ overlay }, index) => {
      const ctx = overlay.getContext("2d");
      ctx.clearRect(0, 0, overlay.width, overlay.height);
      for (let p = 0; p < patches; p++) {
        const k = index * patches + p;
        if (state.mode === "similarity" && state.similarity) {
          const v = (state.similarity[k] - low) / Math.max(1 - low, 1e-6);
          paint(ctx, p, colormap(v), 0.25 + 0.5 * v);
        } else if (state.mode === "attention") {
          paint(ctx, p, colormap(attention[(index * (data.heads + 1) + state.head) * patches + p] / 255), 0.7);
        } else if (state.mode === "pca") {
          paint(ctx, p, Array.from(pcaColours.subarray(k * 3, k * 3 + 3)), 0.85);
        }
      }
      const sel = state.selected;
      if (sel && sel.index === index && state.mode === "similarity") {
        ctx.strokeStyle = "#00e5ff";
        ctx.lineWidth = 2;
        ctx.strokeRect((sel.patch % gw) * cell + 1, Math.floor(sel.patch / gw) * cell + 1, cell - 2, cell - 2);
      }
    });
  }

  modeSelect.addEventListener("change", () => { state.mode = modeSelect.value; draw(); });
  headSelect.addEventListener("change", () => { state.head = Number(headSelect.value); draw(); });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") { state.pinned = false; status.textContent = "unpinned"; }
  });
  document.getElementById("info").textContent = data.note;
})();

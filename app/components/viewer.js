// The slide viewer: OpenSeadragon over the app's Deep Zoom tiles, with the tumour map, verdict marks,
// hot spots and drawn regions painted on one canvas above it in level-0 pixels.
// Pure view changes (pan, zoom, opacity, the map on/off, flying to a hot spot) stay in the browser; only a
// click on a cell and a finished region go back to Python (trigger values `cell` and `region`).
// Keys: H map on/off, [ ] opacity, N next hot spot, 1:1 and magnifications from the toolbar, D draw,
// Enter or a double click closes a region, Escape cancels it.

const BUNDLE = "/viewer/openseadragon.min.js";
const PRESETS = [2.5, 5, 10, 20, 40];
const MARK = { tumour: "#d7191c", normal: "#1a9641", unsure: "#fdae61" };
const REGION = { tumour: "#e7298a", normal: "#1b9e77", outline: "#76ff03", exclusion: "#aaaaaa" };
// YlOrRd: low P pale yellow, high P deep red (hot at a glance)
const RAMP = [[255, 255, 178], [254, 204, 92], [253, 141, 60], [240, 59, 32], [189, 0, 38]];
let loading = null;

function loadBundle() {
  if (window.OpenSeadragon) return Promise.resolve();
  if (!loading) {
    loading = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = BUNDLE;
      script.onload = resolve;
      script.onerror = () => reject(new Error("The slide viewer's bundle did not load from " + BUNDLE +
        ": the app was started without its routes. Start it with `streamlit run app/server.py` (make run does)."));
      document.head.appendChild(script);
    });
  }
  return loading;
}

// OpenSeadragon draws with WebGL by default; where WebGL is software (no GPU: SwiftShader, llvmpipe) a
// frame takes ~150 ms on 2 cores and a 1:1 view fills 7x slower than with the 2-D canvas (BENCHMARKS.md),
// so the renderer is asked once and the canvas drawer used there.
function drawerFor() {
  try {
    const gl = document.createElement("canvas").getContext("webgl");
    if (!gl) return "canvas";
    const info = gl.getExtension("WEBGL_debug_renderer_info");
    const renderer = info ? String(gl.getParameter(info.UNMASKED_RENDERER_WEBGL)) : "";
    return /swiftshader|llvmpipe|softpipe|software|basic render/i.test(renderer) ? "canvas" : "webgl";
  } catch (e) {
    return "canvas";
  }
}

function colour(p) {
  const t = Math.min(1, Math.max(0, p)) * (RAMP.length - 1);
  const i = Math.min(RAMP.length - 2, Math.floor(t));
  const f = t - i;
  return RAMP[i].map((c, k) => Math.round(c + (RAMP[i + 1][k] - c) * f));
}

const TEMPLATE = `
<div class="pcv-bar">
  <span class="pcv-group"></span>
  <button data-act="home" title="Whole slide (0)">Fit</button>
  <label title="Map on/off (H)"><input type="checkbox" class="pcv-show" checked> Map</label>
  <label title="Opacity ([ and ])">Opacity <input type="range" class="pcv-opacity" min="0" max="1" step="0.05"></label>
  <button data-act="draw-tumour" title="Draw a region of tumour the model missed: click the corners, double-click or Enter to close">Draw tumour</button>
  <button data-act="draw-normal" title="Draw a region that is not tumour">Draw not tumour</button>
  <span class="pcv-status"></span>
</div>
<div class="pcv-body">
  <div class="pcv-view" tabindex="0"><canvas class="pcv-paint"></canvas>
    <div class="pcv-legend"><div class="pcv-ramp"></div><div class="pcv-ticks"><span>0</span><span class="pcv-cut"></span><span>1</span></div><div>P(tumour)</div></div>
  </div>
  <div class="pcv-side"><div class="pcv-side-head">Hot spots <button data-act="next" title="Next hot spot not reviewed yet (N)">Next (N)</button></div><ol class="pcv-hot"></ol></div>
</div>`;

class SlideViewer {
  constructor(root) {
    this.root = root;
    root.innerHTML = TEMPLATE;
    this.view = root.querySelector(".pcv-view");
    this.paint = root.querySelector(".pcv-paint");
    this.status = root.querySelector(".pcv-status");
    this.show = true;
    this.opacity = 0.55;
    this.drawing = null; // {kind, points}
    this.hotIndex = -1;
    this.values = null; // Uint8Array of the map, rows x cols
    this.colours = document.createElement("canvas");
    this.fullyLoaded = false;
    root.querySelector(".pcv-opacity").value = this.opacity;
    this.bindControls();
  }

  bindControls() {
    const group = this.root.querySelector(".pcv-group");
    for (const mag of [...PRESETS, "1:1"]) {
      const b = document.createElement("button");
      b.textContent = mag === "1:1" ? "1:1" : mag + "x";
      b.dataset.mag = mag;
      b.title = mag === "1:1" ? "One screen pixel per slide pixel" : "As under a " + mag + "x objective";
      b.onclick = () => this.zoomToMagnification(mag);
      group.appendChild(b);
    }
    this.root.querySelector(".pcv-show").onchange = (e) => this.setShow(e.target.checked);
    this.root.querySelector(".pcv-opacity").oninput = (e) => this.setOpacity(parseFloat(e.target.value));
    this.root.querySelectorAll("[data-act]").forEach((b) => {
      b.onclick = () => {
        const act = b.dataset.act;
        if (act === "home") this.viewer && this.viewer.viewport.goHome();
        if (act === "next") this.nextHotSpot();
        if (act === "draw-tumour") this.startDrawing("tumour");
        if (act === "draw-normal") this.startDrawing("normal");
      };
    });
    // capture: before OpenSeadragon's own keys (arrows pan, +/- zoom, 0 home stay as they are)
    this.view.addEventListener("keydown", (e) => this.onKey(e), true);
    new ResizeObserver(() => this.redraw()).observe(this.view);
  }

  onKey(e) {
    const key = e.key;
    let handled = true;
    if (key === "h" || key === "H") this.setShow(!this.show);
    else if (key === "[") this.setOpacity(this.opacity - 0.1);
    else if (key === "]") this.setOpacity(this.opacity + 0.1);
    else if (key === "n" || key === "N") this.nextHotSpot();
    else if (key === "Escape" && this.drawing) this.stopDrawing(false);
    else if (key === "Enter" && this.drawing) this.stopDrawing(true);
    else handled = false;
    if (handled) { e.stopPropagation(); e.preventDefault(); }
  }

  setShow(show) {
    this.show = show;
    this.root.querySelector(".pcv-show").checked = show;
    this.view.dataset.map = show ? "on" : "off";
    this.redraw();
  }

  setOpacity(value) {
    this.opacity = Math.round(Math.min(1, Math.max(0, value)) * 100) / 100;
    this.root.querySelector(".pcv-opacity").value = this.opacity;
    this.view.dataset.opacity = this.opacity;
    this.redraw();
  }

  update(data, setTrigger) {
    this.data = data;
    this.setTrigger = setTrigger;
    if (!this.viewer) return; // init() applies the data once the bundle is in
    const previous = this.applied || {};
    this.applied = data;
    if (previous.dzi !== data.dzi) this.open(data);
    if (previous.map !== data.map) {
      this.values = null; // no map (a blind read): the slide alone
      if (data.map) this.loadMap(data.map);
      this.root.querySelector(".pcv-legend").style.display = data.map ? "" : "none";
    } else if (previous.threshold !== data.threshold) this.colourMap();
    const cut = this.root.querySelector(".pcv-cut");
    cut.textContent = "▲ " + data.threshold.toFixed(2);
    cut.style.left = data.threshold * 100 + "%";
    this.listHotSpots();
    const moved = JSON.stringify(previous.selected) !== JSON.stringify(data.selected);
    if (previous.dzi === data.dzi && moved && data.selected && !this.inView(data.selected)) {
      this.centreOnCell(data.selected);
    }
    this.redraw();
  }

  inView(cell) {
    const t = this.transform();
    if (!t) return false;
    const x = (cell[1] + 0.5) * this.data.cell * t.scale + t.x, y = (cell[0] + 0.5) * this.data.cell * t.scale + t.y;
    return x >= 0 && y >= 0 && x <= this.view.clientWidth && y <= this.view.clientHeight;
  }

  init() {
    this.viewer = OpenSeadragon({
      element: this.view,
      showNavigationControl: false,
      showNavigator: true,
      navigatorPosition: "TOP_RIGHT",
      navigatorSizeRatio: 0.18,
      maxZoomPixelRatio: 4,
      visibilityRatio: 0.2,
      animationTime: 0.6,
      gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
      crossOriginPolicy: false,
      drawer: drawerFor(),
    });
    this.view.dataset.drawer = this.viewer.drawer.getType();
    this.viewer.addHandler("open", () => this.onOpen());
    for (const ev of ["animation", "update-viewport", "resize", "open"]) {
      this.viewer.addHandler(ev, () => this.redraw());
    }
    this.viewer.addHandler("animation-finish", () => this.remember());
    this.viewer.addHandler("canvas-click", (e) => this.onClick(e));
    this.viewer.addHandler("canvas-double-click", (e) => {
      if (this.drawing) { e.preventDefaultAction = true; this.stopDrawing(true); }
    });
    this.viewer.addHandler("canvas-drag", (e) => { if (this.drawing) e.preventDefaultAction = true; });
    // the paint canvas sits above the tiles and under the navigator; it takes no pointer events
    this.viewer.canvas.appendChild(this.paint);
    this.update(this.data, this.setTrigger);
  }

  open(data) {
    this.fullyLoaded = false;
    this.view.dataset.loaded = "no";
    this.viewer.open(data.dzi);
  }

  onOpen() {
    const item = this.viewer.world.getItemAt(0);
    item.addHandler("fully-loaded-change", (e) => {
      this.fullyLoaded = e.fullyLoaded;
      this.view.dataset.loaded = e.fullyLoaded ? "yes" : "no";
      if (e.fullyLoaded) window.dispatchEvent(new CustomEvent("pcam-viewer-loaded"));
    });
    const v = this.data.view;
    if (v) this.flyTo(v.x, v.y, v.zoom, true);
    else if (this.data.selected) this.centreOnCell(this.data.selected, true);
  }

  item() { return this.viewer && this.viewer.world.getItemAt(0); }

  flyTo(x, y, imageZoom, immediately) {
    const item = this.item();
    if (!item) return;
    const vp = this.viewer.viewport;
    if (imageZoom) vp.zoomTo(item.imageToViewportZoom(imageZoom), null, immediately);
    vp.panTo(item.imageToViewportCoordinates(x, y), immediately);
  }

  centreOnCell(cell, immediately) {
    const size = this.data.cell;
    this.flyTo((cell[1] + 0.5) * size, (cell[0] + 0.5) * size, null, immediately);
  }

  imageZoom() {
    const item = this.item();
    return item ? item.viewportToImageZoom(this.viewer.viewport.getZoom(true)) : 1;
  }

  zoomToMagnification(mag) {
    const item = this.item();
    if (!item) return;
    const zoom = mag === "1:1" ? 1 : (mag * this.data.mpp) / 10; // screen px per level-0 px
    this.viewer.viewport.zoomTo(item.imageToViewportZoom(zoom));
  }

  remember() {
    // the view in the URL: a reload or a bookmark comes back to it (no rerun: the page's URL only)
    const item = this.item();
    if (!item) return;
    const c = item.viewportToImageCoordinates(this.viewer.viewport.getCenter(true));
    const url = new URL(window.location.href);
    url.searchParams.set("view", `${Math.round(c.x)},${Math.round(c.y)},${this.imageZoom().toPrecision(4)}`);
    window.history.replaceState(window.history.state, "", url);
  }

  loadMap(src) {
    const img = new Image();
    img.onload = () => {
      const c = document.createElement("canvas");
      c.width = img.width; c.height = img.height;
      const ctx = c.getContext("2d", { willReadFrequently: true });
      ctx.drawImage(img, 0, 0);
      const rgba = ctx.getImageData(0, 0, img.width, img.height).data;
      this.values = new Uint8Array(img.width * img.height);
      for (let i = 0; i < this.values.length; i++) this.values[i] = rgba[i * 4];
      this.colourMap();
      this.redraw();
    };
    img.src = src;
  }

  colourMap() {
    if (!this.values) return;
    const { rows, cols, threshold } = this.data;
    this.colours.width = cols; this.colours.height = rows;
    const ctx = this.colours.getContext("2d");
    const out = ctx.createImageData(cols, rows);
    const cut = Math.round(threshold * 254);
    const edges = new Path2D();
    const size = this.data.cell;
    const above = (r, c) => r >= 0 && c >= 0 && r < rows && c < cols &&
      this.values[r * cols + c] !== 255 && this.values[r * cols + c] >= cut;
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const v = this.values[r * cols + c];
        if (v === 255 || v < cut) continue;
        const [red, green, blue] = colour(v / 254);
        const o = (r * cols + c) * 4;
        out.data[o] = red; out.data[o + 1] = green; out.data[o + 2] = blue; out.data[o + 3] = 255;
        // the threshold's contour: the cell sides between a cell above it and one below
        if (!above(r - 1, c)) { edges.moveTo(c * size, r * size); edges.lineTo((c + 1) * size, r * size); }
        if (!above(r + 1, c)) { edges.moveTo(c * size, (r + 1) * size); edges.lineTo((c + 1) * size, (r + 1) * size); }
        if (!above(r, c - 1)) { edges.moveTo(c * size, r * size); edges.lineTo(c * size, (r + 1) * size); }
        if (!above(r, c + 1)) { edges.moveTo((c + 1) * size, r * size); edges.lineTo((c + 1) * size, (r + 1) * size); }
      }
    }
    ctx.putImageData(out, 0, 0);
    this.contour = edges;
  }

  // level-0 pixel -> paint canvas pixel: x * scale + offset
  transform() {
    const item = this.item();
    if (!item) return null;
    const o = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
    const one = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(1000, 0));
    return { scale: (one.x - o.x) / 1000, x: o.x, y: o.y };
  }

  redraw() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => { this.frame = null; this.draw(); });
  }

  draw() {
    const t = this.transform();
    const canvas = this.paint;
    const dpr = window.devicePixelRatio || 1;
    const w = this.view.clientWidth, h = this.view.clientHeight;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
      canvas.style.width = w + "px"; canvas.style.height = h + "px";
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!t || !this.data) return;
    const size = this.data.cell;
    const s = t.scale;
    ctx.setTransform(dpr * s, 0, 0, dpr * s, dpr * t.x, dpr * t.y); // from here on: level-0 pixels
    if (this.show && this.values) {
      ctx.imageSmoothingEnabled = false; // cells stay sharp squares when zoomed in
      ctx.globalAlpha = this.opacity;
      ctx.drawImage(this.colours, 0, 0, this.data.cols * size, this.data.rows * size);
      ctx.globalAlpha = 1;
      if (this.contour) { ctx.strokeStyle = "#00e5ff"; ctx.lineWidth = 2 / s; ctx.stroke(this.contour); }
    }
    const least = 8 / s; // a mark is at least 8 screen pixels wide at any zoom
    for (const [r, c, verdict] of this.data.marks) {
      const m = Math.max(size * 0.8, least);
      ctx.strokeStyle = MARK[verdict] || "#888";
      ctx.lineWidth = 3 / s;
      ctx.strokeRect((c + 0.5) * size - m / 2, (r + 0.5) * size - m / 2, m, m);
    }
    for (const ring of this.data.outlines) this.drawRegion(ctx, ring.kind, ring.points, s, true, true);
    for (const region of this.data.regions) this.drawRegion(ctx, region.kind, region.points, s, true);
    if (this.drawing) this.drawRegion(ctx, this.drawing.kind, this.drawing.points, s, false);
    if (this.data.selected) {
      const [r, c] = this.data.selected;
      ctx.strokeStyle = "#ffdc00"; ctx.lineWidth = 3 / s;
      const m = Math.max(size, least);
      ctx.strokeRect((c + 0.5) * size - m / 2, (r + 0.5) * size - m / 2, m, m);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    this.drawScale(ctx, s, h);
  }

  drawRegion(ctx, kind, points, s, closed, outline) {
    if (!points.length) return;
    ctx.beginPath();
    ctx.moveTo(points[0][0], points[0][1]);
    for (const [x, y] of points.slice(1)) ctx.lineTo(x, y);
    if (closed) ctx.closePath();
    ctx.strokeStyle = REGION[kind]; ctx.lineWidth = (outline ? 1.5 : 2.5) / s;
    ctx.setLineDash(closed && kind !== "exclusion" ? [] : [8 / s, 5 / s]);
    ctx.stroke();
    ctx.setLineDash([]);
    if (closed && !outline) { ctx.fillStyle = REGION[kind] + "22"; ctx.fill(); }
  }

  drawScale(ctx, s, h) {
    const umPerPx = this.data.mpp / s; // micrometres per screen pixel
    const target = 120 * umPerPx;
    const p = Math.pow(10, Math.floor(Math.log10(target)));
    const nice = [1, 2, 5, 10].map((k) => k * p).filter((v) => v <= target).pop() || p;
    const len = nice / umPerPx;
    const label = nice >= 1000 ? nice / 1000 + " mm" : nice + " µm";
    const mag = (10 * s) / this.data.mpp;
    ctx.fillStyle = "rgba(255,255,255,0.8)";
    ctx.fillRect(8, h - 40, Math.max(len, 90) + 16, 32);
    ctx.fillStyle = "#111";
    ctx.fillRect(16, h - 16, len, 4);
    ctx.font = "12px sans-serif";
    ctx.fillText(`${label} · ${mag >= 10 ? mag.toFixed(0) : mag.toFixed(1)}x`, 16, h - 22);
    this.view.dataset.magnification = mag.toFixed(2);
  }

  onClick(e) {
    if (!e.quick) return;
    const item = this.item();
    const p = item.viewerElementToImageCoordinates(e.position);
    if (this.drawing) {
      e.preventDefaultAction = true;
      this.drawing.points.push([Math.round(p.x), Math.round(p.y)]);
      this.redraw();
      return;
    }
    const row = Math.floor(p.y / this.data.cell), col = Math.floor(p.x / this.data.cell);
    if (row < 0 || col < 0 || row >= this.data.rows || col >= this.data.cols) return;
    this.data.selected = [row, col];
    this.redraw();
    this.setTrigger("cell", { row, col });
  }

  startDrawing(kind) {
    this.drawing = { kind, points: [] };
    this.status.textContent = `Drawing ${kind === "tumour" ? "tumour" : "not tumour"}: click the corners; double-click or Enter closes, Escape cancels`;
    this.view.focus();
  }

  stopDrawing(keep) {
    const drawing = this.drawing;
    this.drawing = null;
    this.status.textContent = "";
    // a double click adds its first click as a corner too: drop a repeated last point
    const pts = drawing.points.filter((q, i, a) => i === 0 || Math.hypot(q[0] - a[i - 1][0], q[1] - a[i - 1][1]) > 1);
    if (keep && pts.length >= 3) this.setTrigger("region", { kind: drawing.kind, points: pts });
    else if (keep) this.status.textContent = "A region needs at least 3 corners.";
    this.redraw();
  }

  listHotSpots() {
    const list = this.root.querySelector(".pcv-hot");
    list.innerHTML = "";
    this.data.hotspots.forEach((spot, i) => {
      const li = document.createElement("li");
      li.className = spot.reviewed ? "pcv-reviewed" : "";
      li.textContent = `${spot.reviewed ? "✓ " : ""}P ${spot.peak.toFixed(2)} · ${spot.area < 0.01 ? spot.area.toFixed(4) : spot.area.toFixed(2)} mm²`;
      li.title = `${spot.cells} cells; click to fly there`;
      li.onclick = () => this.flyToHotSpot(i);
      list.appendChild(li);
    });
    if (!this.data.hotspots.length) list.innerHTML = "<li class='pcv-none'>None at this threshold</li>";
  }

  flyToHotSpot(i) {
    const spot = this.data.hotspots[i];
    const item = this.item();
    if (!spot || !item) return;
    this.hotIndex = i;
    const pad = Math.max(spot.w, spot.h) * 0.6 + this.data.cell * 4;
    const rect = item.imageToViewportRectangle(spot.x - pad, spot.y - pad, spot.w + 2 * pad, spot.h + 2 * pad);
    this.viewer.viewport.fitBounds(rect);
    this.root.querySelectorAll(".pcv-hot li").forEach((li, k) => li.classList.toggle("pcv-current", k === i));
  }

  nextHotSpot() {
    const spots = this.data.hotspots;
    for (let k = 1; k <= spots.length; k++) {
      const i = (this.hotIndex + k) % spots.length;
      if (!spots[i].reviewed) return this.flyToHotSpot(i);
    }
    if (spots.length) this.flyToHotSpot((this.hotIndex + 1) % spots.length);
  }
}

export default function (component) {
  const { parentElement, data, setTriggerValue } = component;
  let root = parentElement.querySelector(".pcam-viewer");
  if (!root) {
    root = document.createElement("div");
    root.className = "pcam-viewer";
    root.style.height = data.height + "px";
    parentElement.appendChild(root);
    root.viewerState = new SlideViewer(root);
    loadBundle().then(() => root.viewerState.init(), (e) => {
      root.textContent = e.message;
      root.className = "pcam-viewer pcv-failed";
    });
  }
  root.viewerState.update(data, setTriggerValue);
}

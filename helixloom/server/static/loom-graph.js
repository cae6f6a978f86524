// helixloom loom: the tree view. The whole tree on one canvas (a canvas, not DOM or SVG nodes, so a
// 10,000-node tree draws in milliseconds), depth left to right, leaves top to bottom; wheel zooms
// around the pointer, dragging pans, a click selects the nearest node.
"use strict";

class TreeGraph {
  constructor(canvas, onSelect) {
    this.canvas = canvas; this.ctx = canvas.getContext("2d"); this.onSelect = onSelect;
    this.pos = new Map(); this.order = []; this.scale = 1; this.ox = 20; this.oy = 20; this.look = null;
    this.DX = 110; this.DY = 18;
    let drag = null;
    canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      const r = canvas.getBoundingClientRect();
      this.zoomAt(e.deltaY < 0 ? 1.2 : 1 / 1.2, e.clientX - r.left, e.clientY - r.top);
    }, { passive: false });
    canvas.addEventListener("mousedown", (e) => { drag = { x: e.clientX, y: e.clientY, ox: this.ox, oy: this.oy, moved: false }; });
    window.addEventListener("mousemove", (e) => {
      if (!drag) return;
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      if (drag.moved) { this.ox = drag.ox + dx; this.oy = drag.oy + dy; this.draw(); }
    });
    window.addEventListener("mouseup", (e) => {
      if (drag && !drag.moved && e.target === canvas) {
        const r = canvas.getBoundingClientRect();
        const id = this.hit(e.clientX - r.left, e.clientY - r.top);
        if (id) this.onSelect(id);
      }
      drag = null;
    });
    new ResizeObserver(() => this.draw()).observe(canvas);
  }

  // Tidy enough for reading: each leaf gets its own row, a parent sits midway between its first and
  // last child. Iterative (trees thousands of levels deep would overflow recursion).
  layout(rootId, kids) {
    this.pos = new Map(); this.order = []; this.invalidate();
    let row = 0;
    const stack = [[rootId, 0, false]];
    while (stack.length) {
      const [id, depth, done] = stack.pop();
      const children = kids(id);
      if (done || !children.length) {
        const y = children.length ? (this.pos.get(children[0].id).y + this.pos.get(children[children.length - 1].id).y) / 2 : row++;
        this.pos.set(id, { x: depth, y }); this.order.push(id);
        continue;
      }
      stack.push([id, depth, true]);
      for (let i = children.length - 1; i >= 0; i--) stack.push([children[i].id, depth + 1, false]);
    }
    this.rows = row;
  }

  screenPos(id) {
    const p = this.pos.get(id);
    return p && { x: this.ox + p.x * this.DX * this.scale, y: this.oy + p.y * this.DY * this.scale };
  }

  hit(x, y) {
    let best = null, bestD = 12 * 12;
    for (const [id] of this.pos) {
      const s = this.screenPos(id), d = (s.x - x) ** 2 + (s.y - y) ** 2;
      if (d < bestD) { best = id; bestD = d; }
    }
    return best;
  }

  zoomAt(f, x, y) {
    const s = Math.min(8, Math.max(0.02, this.scale * f)); f = s / this.scale;
    this.ox = x - (x - this.ox) * f; this.oy = y - (y - this.oy) * f; this.scale = s; this.draw();
  }

  fit(redraw = true) {
    const w = this.canvas.clientWidth || 300, h = this.canvas.clientHeight || 300;
    let maxX = 0; for (const p of this.pos.values()) maxX = Math.max(maxX, p.x);
    this.scale = Math.min(2, Math.max(0.02, Math.min((w - 40) / ((maxX + 1) * this.DX), (h - 40) / (Math.max(1, this.rows) * this.DY))));
    this.ox = 20; this.oy = 20; if (redraw) this.draw();
  }

  // Keep ``id`` on screen: pan only when it has left the view.
  reveal(id) {
    const s = this.screenPos(id); if (!s) return;
    const w = this.canvas.clientWidth, h = this.canvas.clientHeight;
    if (s.x < 10 || s.y < 10 || s.x > w - 10 || s.y > h - 10) { this.ox += w / 2 - s.x; this.oy += h / 2 - s.y; }
  }

  // Anything but the current node changed (the tree, marks, colours): redraw everything next time.
  invalidate() { this.version = (this.version || 0) + 1; }

  // look: {current, path: Set, parentOf(id), colour(id), isNew(id), bookmarked(id), label(id),
  // scoreOf(id), hasKids(id)}. The whole tree is drawn once into an off-screen canvas, redrawn only
  // when the view or the tree changes; moving to another node draws just the path over that copy.
  draw(look) {
    if (look) this.look = look;
    const L = this.look; if (!L) return;
    const c = this.canvas, ctx = this.ctx, dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth, h = c.clientHeight;
    if (!w || !h) return;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) { c.width = Math.round(w * dpr); c.height = Math.round(h * dpr); }
    const key = [this.ox, this.oy, this.scale, w, h, dpr, this.version].join();
    if (key !== this.baseKey) {
      this.base = this.base || document.createElement("canvas");
      this.base.width = c.width; this.base.height = c.height;
      const b = this.base.getContext("2d");
      b.setTransform(dpr, 0, 0, dpr, 0, 0);
      this.drawTree(b, L, w, h);
      this.baseKey = key;
    }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, c.width, c.height);
    ctx.drawImage(this.base, 0, 0);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const sx = this.DX * this.scale, sy = this.DY * this.scale, r = this.radius();
    ctx.strokeStyle = "#2563eb"; ctx.lineWidth = 3; ctx.beginPath();
    for (const id of L.path) {
      const parent = L.parentOf(id); if (!parent || !this.pos.has(parent) || !this.pos.has(id)) continue;
      const q = this.pos.get(parent), p = this.pos.get(id);
      ctx.moveTo(this.ox + q.x * sx, this.oy + q.y * sy); ctx.lineTo(this.ox + p.x * sx, this.oy + p.y * sy);
    }
    ctx.stroke();
    for (const id of L.path) {
      const p = this.pos.get(id); if (!p) continue;
      ctx.beginPath(); ctx.arc(this.ox + p.x * sx, this.oy + p.y * sy, r, 0, 2 * Math.PI);
      ctx.fillStyle = L.colour(id); ctx.fill();
    }
    const cur = this.pos.get(L.current);
    if (cur) {
      ctx.beginPath(); ctx.arc(this.ox + cur.x * sx, this.oy + cur.y * sy, r + 4, 0, 2 * Math.PI);
      ctx.strokeStyle = "#dc2626"; ctx.lineWidth = 2; ctx.stroke();
    }
  }

  // One node's look changed (read now): paint it over the off-screen copy instead of redrawing all.
  patch(id) {
    const p = this.pos.get(id), L = this.look;
    if (!p || !L || !this.base || !this.baseKey) return;
    const b = this.base.getContext("2d"), r = this.radius();
    const x = this.ox + p.x * this.DX * this.scale, y = this.oy + p.y * this.DY * this.scale;
    b.beginPath(); b.arc(x, y, r + 1, 0, 2 * Math.PI); b.fillStyle = L.colour(id); b.fill();
  }

  radius() { return Math.max(1.5, Math.min(6, 4 * this.scale)); }

  drawTree(ctx, L, w, h) {
    ctx.clearRect(0, 0, w, h);
    const sx = this.DX * this.scale, sy = this.DY * this.scale;
    const inView = (x, y) => x > -50 && x < w + 50 && y > -50 && y < h + 50;
    ctx.strokeStyle = "#c8c8c8"; ctx.lineWidth = 1; ctx.beginPath();
    for (const [id, p] of this.pos) {
      const parent = L.parentOf(id); if (!parent || !this.pos.has(parent)) continue;
      const q = this.pos.get(parent);
      const x1 = this.ox + q.x * sx, y1 = this.oy + q.y * sy, x2 = this.ox + p.x * sx, y2 = this.oy + p.y * sy;
      if (!inView(x1, y1) && !inView(x2, y2) && (y1 < 0 && y2 < 0 || y1 > h && y2 > h)) continue;
      ctx.moveTo(x1, y1); ctx.lineTo(x2, y2);
    }
    ctx.stroke();
    // Nodes batched by colour, one path and one fill per colour: a fill per node costs ~50 µs in a
    // software-rendered canvas, half a second for 10,000 nodes.
    const r = this.radius(), labels = sy >= 13;
    const filled = new Map(), hollow = new Map(), stars = [], named = [];
    const round = r > 2.5; // below that a square looks the same and draws several times faster
    const add = (m, key, x, y) => {
      let p = m.get(key); if (!p) m.set(key, (p = new Path2D()));
      if (round) { p.moveTo(x + r, y); p.arc(x, y, r, 0, 2 * Math.PI); } else p.rect(x - r, y - r, 2 * r, 2 * r);
    };
    for (const [id, p] of this.pos) {
      const x = this.ox + p.x * sx, y = this.oy + p.y * sy;
      if (!inView(x, y)) continue;
      add(L.isNew(id) ? hollow : filled, L.colour(id), x, y);
      if (L.bookmarked(id)) stars.push([x, y]);
      if (labels) named.push([id, x, y]);
    }
    for (const [colour, p] of filled) { ctx.fillStyle = colour; ctx.fill(p); }
    ctx.lineWidth = 2; ctx.fillStyle = "#fff";
    for (const [colour, p] of hollow) { ctx.fill(p); ctx.strokeStyle = colour; ctx.stroke(p); }
    ctx.font = "11px system-ui, sans-serif"; ctx.textBaseline = "middle";
    ctx.fillStyle = "#d97706";
    for (const [x, y] of stars) ctx.fillText("★", x - 4, y - r - 6);
    ctx.fillStyle = "#333";
    for (const [id, x, y] of named) {
      const score = L.scoreOf(id);
      const text = (score === null ? "" : `[${score.toFixed(2)}] `) + L.label(id);
      // A leaf's label runs to the right; a parent's sits above it, clear of its edges.
      if (L.hasKids(id)) ctx.fillText(text.slice(0, 18), x - r, y - r - 5); else ctx.fillText(text, x + r + 3, y);
    }
  }
}

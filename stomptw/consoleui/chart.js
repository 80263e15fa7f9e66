// A small line chart on <canvas>: a few series over the last minutes of
// one-second samples, an optional dashed limit line, a legend with the
// latest values (in the DOM, as text).

import { el } from "./util.js";

/** The series colours (the legend's swatches use the same, see console.css). */
export const COLORS = ["#2f6fdd", "#1a9b5b", "#d9822b", "#a23ec8", "#c23b3b"];

export class LineChart {
  /**
   * @param {HTMLElement} figure where the canvas and the legend go
   * @param {object} options
   *   series: [{key, label}], each key a function of a sample (or null)
   *   limit: optional {label, value: (sample) => number|null}
   *   format: (value) => string, for the axis and the legend
   *   span: seconds shown (300)
   */
  constructor(figure, options) {
    this.figure = figure;
    this.series = options.series;
    this.limit = options.limit || null;
    this.format = options.format || String;
    this.span = options.span || 300;
    this.samples = [];
    this.canvas = el("canvas", { width: 360, height: 160, class: "plot" });
    this.values = this.series.map(() => el("span", { class: "value" }, "–"));
    const items = this.series.map((s, i) =>
      el("li", { "data-series": s.label }, el("i", { class: `swatch s${i}` }), `${s.label} `, this.values[i]),
    );
    if (this.limit) {
      this.limitValue = el("span", { class: "value" }, "–");
      items.push(el("li", {}, el("i", { class: "swatch limit" }), `${this.limit.label} `, this.limitValue));
    }
    figure.append(this.canvas, el("ul", { class: "legend" }, items));
    this.observer = new ResizeObserver(() => this.draw());
    this.observer.observe(this.canvas);
  }

  /** Replace every sample (the overview's history). */
  setSamples(samples) {
    this.samples = samples.slice(-this.span);
    this.draw();
  }

  /** Add one sample (an event) and redraw. */
  push(sample) {
    this.samples.push(sample);
    if (this.samples.length > this.span) this.samples.splice(0, this.samples.length - this.span);
    this.draw();
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(200, canvas.clientWidth || 360);
    const height = Math.max(120, canvas.clientHeight || 160);
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);

    const samples = this.samples;
    const lines = this.series.map((s) => samples.map((p) => s.key(p)));
    const limits = this.limit ? samples.map((p) => this.limit.value(p)) : [];
    let max = 0;
    for (const line of [...lines, limits]) {
      for (const v of line) if (v !== null && v !== undefined && v > max) max = v;
    }
    max = niceCeiling(max);

    const left = 56;
    const right = 8;
    const top = 8;
    const bottom = 18;
    const plotW = width - left - right;
    const plotH = height - top - bottom;
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#667";
    ctx.strokeStyle = "#e3e6ec";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i += 1) {
      const y = top + plotH - (plotH * i) / 4;
      ctx.beginPath();
      ctx.moveTo(left, Math.round(y) + 0.5);
      ctx.lineTo(width - right, Math.round(y) + 0.5);
      ctx.stroke();
      ctx.fillText(this.format((max * i) / 4), left - 6, y);
    }
    ctx.textAlign = "left";
    ctx.textBaseline = "alphabetic";
    ctx.fillText(`last ${Math.round(this.span / 60)} min`, left, height - 4);

    const x = (i) => left + plotW - ((samples.length - 1 - i) * plotW) / (this.span - 1);
    const y = (v) => top + plotH - (max ? (v / max) * plotH : 0);
    const stroke = (values, color, dashed) => {
      ctx.strokeStyle = color;
      ctx.lineWidth = 1.75;
      ctx.setLineDash(dashed ? [5, 4] : []);
      ctx.beginPath();
      let drawing = false;
      values.forEach((v, i) => {
        if (v === null || v === undefined) {
          drawing = false;
          return;
        }
        if (drawing) ctx.lineTo(x(i), y(v));
        else ctx.moveTo(x(i), y(v));
        drawing = true;
      });
      ctx.stroke();
      ctx.setLineDash([]);
    };
    if (this.limit) stroke(limits, "#c23b3b", true);
    lines.forEach((values, i) => stroke(values, COLORS[i % COLORS.length], false));

    const last = samples[samples.length - 1];
    this.series.forEach((s, i) => {
      const v = last ? s.key(last) : null;
      this.values[i].textContent = v === null || v === undefined ? "–" : this.format(v);
    });
    if (this.limit) {
      const v = last ? this.limit.value(last) : null;
      this.limitValue.textContent = v === null || v === undefined ? "off" : this.format(v);
    }
    canvas.dataset.samples = String(samples.length);
    canvas.dataset.max = String(max);
  }
}

/** The smallest 1, 2 or 5 times a power of ten at or above `value` (1 for 0). */
function niceCeiling(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) {
    if (step * power >= value) return step * power;
  }
  return 10 * power;
}

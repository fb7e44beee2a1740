/**
 * `--plot FILE.svg`: a self-contained SVG line chart of a figure against
 * message size, with a log2 x axis (one labelled tick per power of two in
 * the data), a linear y axis from 0 with round labelled ticks, one polyline
 * point and one dot per measured size.
 *
 * @module
 */

/** One measured point. */
export interface PlotPoint {
  /** Message size in bytes (> 0). */
  bytes: number;
  /** The figure (>= 0). */
  value: number;
}

/** What to draw. */
export interface PlotSpec {
  /** Title above the chart. */
  title: string;
  /** Label of the y axis (the figure and its unit). */
  yLabel: string;
  /** The points, in any order. */
  points: PlotPoint[];
}

const WIDTH = 720;
const HEIGHT = 420;
const MARGIN = { left: 80, right: 30, top: 50, bottom: 60 };

/** Escapes text for SVG content and attributes. */
function esc(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(
    /"/g,
    "&quot;",
  );
}

/** A size as people write it: 512, 4K, 1M. */
export function sizeLabel(bytes: number): string {
  if (bytes >= 1 << 20 && bytes % (1 << 20) === 0) return `${bytes / (1 << 20)}M`;
  if (bytes >= 1024 && bytes % 1024 === 0) return `${bytes / 1024}K`;
  return String(bytes);
}

/** A round step for about `ticks` intervals up to `max` (1, 2 or 5 times a power of ten). */
function niceStep(max: number, ticks: number): number {
  const raw = max / ticks;
  const power = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * power >= raw) return m * power;
  return 10 * power;
}

function num(x: number): string {
  return x.toFixed(1);
}

/**
 * The SVG text of the chart.
 *
 * @example
 * ```ts
 * import { plotSvg } from "./perf_plot.ts";
 * const svg = plotSvg({ title: "write_bw", yLabel: "MB/sec", points: [
 *   { bytes: 2, value: 1 }, { bytes: 4, value: 2 }, { bytes: 8, value: 4 },
 * ] });
 * const points = /<polyline[^>]* points="([^"]*)"/.exec(svg)![1]!.trim().split(/\s+/);
 * if (!svg.startsWith("<svg") || points.length !== 3) throw new Error(svg);
 * ```
 */
export function plotSvg(spec: PlotSpec): string {
  if (spec.points.length === 0) throw new RangeError("a plot needs at least one point");
  for (const p of spec.points) {
    if (!(p.bytes > 0) || !(p.value >= 0) || !Number.isFinite(p.value)) {
      throw new RangeError(`plot point ${JSON.stringify(p)} is not a size > 0 and a figure >= 0`);
    }
  }
  const points = [...spec.points].sort((a, b) => a.bytes - b.bytes);
  let lo = Math.log2(points[0]!.bytes);
  let hi = Math.log2(points[points.length - 1]!.bytes);
  if (hi === lo) [lo, hi] = [lo - 1, hi + 1];
  const maxValue = Math.max(...points.map((p) => p.value));
  const step = niceStep(maxValue > 0 ? maxValue : 1, 5);
  const top = Math.max(step, Math.ceil((maxValue * 1.05) / step) * step);
  const plotW = WIDTH - MARGIN.left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const x = (bytes: number) => MARGIN.left + ((Math.log2(bytes) - lo) / (hi - lo)) * plotW;
  const y = (value: number) => MARGIN.top + plotH - (value / top) * plotH;
  const bottom = MARGIN.top + plotH;
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" ` +
      `viewBox="0 0 ${WIDTH} ${HEIGHT}" font-family="sans-serif" font-size="12">`,
    `<rect x="0" y="0" width="${WIDTH}" height="${HEIGHT}" fill="white"/>`,
    `<text x="${WIDTH / 2}" y="25" text-anchor="middle" font-size="16">${esc(spec.title)}</text>`,
  );
  // Grid and y ticks.
  out.push(`<g class="y-axis" stroke="#ddd">`);
  for (let v = 0; v <= top + step / 2; v += step) {
    out.push(
      `<line x1="${MARGIN.left}" y1="${num(y(v))}" x2="${WIDTH - MARGIN.right}" y2="${
        num(y(v))
      }"/>`,
    );
  }
  out.push(`</g>`, `<g class="y-labels" text-anchor="end">`);
  for (let v = 0; v <= top + step / 2; v += step) {
    const label = Number.isInteger(step)
      ? String(v)
      : v.toFixed(Math.max(0, -Math.floor(Math.log10(step))));
    out.push(`<text x="${MARGIN.left - 8}" y="${num(y(v) + 4)}">${label}</text>`);
  }
  out.push(`</g>`);
  // x ticks: every power of two between the first and last size.
  out.push(`<g class="x-labels" text-anchor="middle">`);
  for (let e = Math.ceil(lo); e <= Math.floor(hi); e++) {
    const bytes = 2 ** e;
    const px = num(x(bytes));
    out.push(
      `<line x1="${px}" y1="${bottom}" x2="${px}" y2="${bottom + 5}" stroke="black"/>`,
      `<text x="${px}" y="${bottom + 18}">${sizeLabel(bytes)}</text>`,
    );
  }
  out.push(`</g>`);
  // Axes and their labels.
  out.push(
    `<line x1="${MARGIN.left}" y1="${bottom}" x2="${
      WIDTH - MARGIN.right
    }" y2="${bottom}" stroke="black"/>`,
    `<line x1="${MARGIN.left}" y1="${MARGIN.top}" x2="${MARGIN.left}" y2="${bottom}" stroke="black"/>`,
    `<text x="${MARGIN.left + plotW / 2}" y="${
      HEIGHT - 15
    }" text-anchor="middle">message size [bytes] (log2)</text>`,
    `<text x="18" y="${MARGIN.top + plotH / 2}" text-anchor="middle" ` +
      `transform="rotate(-90 18 ${MARGIN.top + plotH / 2})">${esc(spec.yLabel)}</text>`,
  );
  const coords = points.map((p) => `${num(x(p.bytes))},${num(y(p.value))}`);
  out.push(
    `<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="${coords.join(" ")}"/>`,
    `<g class="points" fill="#1f77b4">`,
    ...points.map((p) =>
      `<circle cx="${num(x(p.bytes))}" cy="${num(y(p.value))}" r="3"><title>${
        sizeLabel(p.bytes)
      } B: ${esc(String(p.value))}</title></circle>`
    ),
    `</g>`,
    `</svg>`,
  );
  return out.join("\n") + "\n";
}

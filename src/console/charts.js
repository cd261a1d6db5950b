// Small charts drawn as SVG: a line of samples and bars per time bucket.

const NS = 'http://www.w3.org/2000/svg';
const W = 600;
const H = 160;
const PAD = 28;

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function frame(label, max, unit) {
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': label, class: 'chart' });
  root.append(svg('title', {}, label));
  root.append(svg('line', { x1: PAD, y1: H - PAD, x2: W, y2: H - PAD, class: 'axis' }));
  root.append(svg('text', { x: 2, y: 12, class: 'tick' }, `${max}${unit}`));
  root.append(svg('text', { x: 2, y: H - PAD, class: 'tick' }, `0${unit}`));
  return root;
}

/** A line through `values` (oldest first), scaled to their maximum. */
export function lineChart(label, values, unit = '') {
  const max = Math.max(1, ...values);
  const root = frame(label, max, unit);
  if (values.length > 1) {
    const step = (W - PAD) / (values.length - 1);
    const points = values.map((v, i) => `${PAD + i * step},${H - PAD - (v / max) * (H - 2 * PAD)}`);
    root.append(svg('polyline', { points: points.join(' '), class: 'line' }));
  }
  return root;
}

/** Bars for `buckets` ({label, value}), oldest first. */
export function barChart(label, buckets, unit = '', max = null) {
  const top = max ?? Math.max(1, ...buckets.map((b) => b.value));
  const root = frame(label, Math.round(top * 100) / 100, unit);
  const width = (W - PAD) / Math.max(1, buckets.length);
  buckets.forEach((b, i) => {
    const height = (b.value / top) * (H - 2 * PAD);
    const bar = svg('rect', { x: PAD + i * width + 2, y: H - PAD - height, width: Math.max(1, width - 4), height, class: 'bar' });
    bar.append(svg('title', {}, `${b.label}: ${b.value}${unit}`));
    root.append(bar);
    if (i % 3 === 0) root.append(svg('text', { x: PAD + i * width, y: H - 8, class: 'tick' }, b.label));
  });
  return root;
}

// Building the page from data without ever parsing data as HTML.

/** An element with attributes (`on*` functions become listeners) and children. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (name === 'class') {
      el.className = value;
    } else if (value === true) {
      el.setAttribute(name, '');
    } else {
      el.setAttribute(name, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces the element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Long text on one line, cut with an ellipsis; the whole of it on demand. */
export function longText(text, cls = '') {
  if (!text) return h('span', { class: 'muted' }, '—');
  const shown = h('span', { class: `truncate ${cls}`, title: text }, text);
  const more = h('button', {
    type: 'button',
    class: 'link more',
    'aria-expanded': 'false',
    onclick: () => {
      const open = shown.classList.toggle('whole');
      more.textContent = open ? 'less' : 'more';
      more.setAttribute('aria-expanded', String(open));
    },
  }, 'more');
  return h('span', { class: 'long' }, shown, text.length > 60 ? more : null);
}

export function badge(status) {
  return h('span', { class: `badge ${String(status).toLowerCase()}` }, status);
}

export function time(iso) {
  if (!iso) return h('span', { class: 'muted' }, '—');
  const at = new Date(iso);
  return h('time', { datetime: iso, title: at.toISOString() }, at.toLocaleString());
}

export function bytes(n) {
  if (n === undefined || n === null) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/** Asks for confirmation in the page's dialog; resolves to true when confirmed. */
export function confirmAction(text, action) {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-ok').textContent = action;
  dialog.returnValue = '';
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
  });
}

/** A line saying what went wrong, or what happened. */
export function notice(el, message, kind = 'error') {
  fill(el, message ? h('p', { class: `notice ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, message) : null);
}

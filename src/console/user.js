// A user's pages: submit a prompt and watch one's tasks change live, the gallery of
// one's images, and speech to text.

import { api, follow, imageUrl, query } from '/console/api.js';
import { h, fill, longText, badge, time, notice } from '/console/dom.js';

const PAGE = 20;
const MAX_LIST = 100;
const ENDED = ['DONE', 'FAILED', 'CANCELLED'];

/** A thumbnail box of fixed size, filled once the image has loaded. */
function thumbnail(resultUrl, alt) {
  const box = h('span', { class: 'thumb' });
  if (resultUrl) {
    imageUrl(resultUrl).then((url) => {
      fill(box, h('img', { src: url, alt, 'data-result': resultUrl }));
    }).catch(() => fill(box, h('span', { class: 'muted' }, 'no image')));
  }
  return box;
}

function progress(task) {
  if (task.status === 'QUEUED' && task.queue_position) {
    const eta = task.eta_secs !== undefined && task.eta_secs !== null ? ` · about ${task.eta_secs} s` : '';
    return `#${task.queue_position} in line${eta}`;
  }
  if (task.status === 'RUNNING') return `attempt ${task.attempts || 1}`;
  return '';
}

/** One task's row; `render` again replaces its content in place. */
function taskRow(task, onCancel) {
  const row = h('li', { class: 'task', 'data-task': task.task_id });
  row.render = (t) => {
    const live = t.status === 'QUEUED' || t.status === 'RUNNING';
    fill(row,
      thumbnail(t.status === 'DONE' ? t.result_url : null, t.prompt),
      h('div', { class: 'task-main' },
        longText(t.prompt, 'prompt'),
        h('div', { class: 'task-meta' }, badge(t.status), ' ',
          h('span', { class: 'progress' }, progress(t)), ' ', time(t.created_at)),
        t.error ? h('div', { class: 'error-text' }, longText(t.error)) : null),
      live ? h('button', { type: 'button', class: 'secondary small', onclick: () => onCancel(t) }, 'Cancel') : h('span', { class: 'spacer' }));
  };
  row.render(task);
  return row;
}

export async function submitPage(root) {
  const message = h('div', { class: 'message' });
  const form = h('form', { class: 'card', 'data-form': 'submit' },
    h('h1', {}, 'New image'),
    h('label', {}, 'Prompt', h('textarea', { name: 'prompt', rows: 3, required: true, maxlength: 4000 })),
    h('label', {}, 'Negative prompt', h('input', { name: 'negative_prompt', maxlength: 4000 })),
    h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Submit')),
    message);
  const list = h('ul', { class: 'tasks', 'data-list': 'tasks' });
  const more = h('button', { type: 'button', class: 'secondary', hidden: true }, 'Show more');
  fill(root, form, h('h2', {}, 'Your tasks'), list, more);

  const tasks = new Map();
  let limit = PAGE;
  const cancel = async (task) => {
    try {
      show(await api('POST', `/api/v1/tasks/${encodeURIComponent(task.task_id)}/cancel`));
    } catch (error) {
      notice(message, error.message);
    }
  };
  const show = (task, first = true) => {
    const known = tasks.get(task.task_id);
    if (known) {
      // Answers may cross: an ended task does not go back to an older state.
      if (ENDED.includes(known.task.status) && !ENDED.includes(task.status)) return;
      Object.assign(known.task, task);
      known.row.render(known.task);
      return;
    }
    const row = taskRow(task, cancel);
    tasks.set(task.task_id, { task: { ...task }, row });
    if (first) list.prepend(row); else list.append(row);
  };
  const load = async () => {
    const newest = await api('GET', `/api/v1/tasks${query({ limit })}`);
    for (const task of newest.reverse()) show(task);
    more.hidden = newest.length < limit || limit >= MAX_LIST;
  };
  more.addEventListener('click', async () => {
    limit = Math.min(limit + PAGE, MAX_LIST);
    const older = await api('GET', `/api/v1/tasks${query({ limit })}`);
    for (const task of older) if (!tasks.has(task.task_id)) show(task, false);
    more.hidden = older.length < limit || limit >= MAX_LIST;
  });
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const body = { prompt: form.prompt.value };
    if (form.negative_prompt.value) body.negative_prompt = form.negative_prompt.value;
    try {
      const submitted = await api('POST', '/api/v1/image/async', body);
      notice(message, `Queued ${submitted.task_id}`, 'ok');
      form.prompt.value = '';
      if (!tasks.has(submitted.task_id)) {
        show(await api('GET', `/api/v1/tasks${query({ task_id: submitted.task_id })}`));
      }
    } catch (error) {
      notice(message, error.message);
    }
  });
  // Events carry the task's new state; a task first seen here is fetched whole.
  const stop = follow(async (event) => {
    const known = tasks.get(event.task_id);
    if (!known) {
      try { show(await api('GET', `/api/v1/tasks${query({ task_id: event.task_id })}`)); } catch { /* gone */ }
      return;
    }
    const change = { status: event.status };
    for (const key of ['queue_position', 'eta_secs', 'result_url', 'error', 'attempt']) {
      if (event[key] !== undefined) change[key === 'attempt' ? 'attempts' : key] = event[key];
    }
    show({ task_id: event.task_id, ...change });
  });
  await load();
  return stop;
}

export async function galleryPage(root) {
  const grid = h('div', { class: 'gallery', 'data-list': 'gallery' });
  fill(root, h('h1', {}, 'Gallery'), grid);
  const tasks = await api('GET', `/api/v1/tasks${query({ limit: MAX_LIST })}`);
  const done = tasks.filter((t) => t.status === 'DONE' && t.result_url);
  if (!done.length) fill(grid, h('p', { class: 'muted' }, 'No images yet.'));
  for (const task of done) {
    const frame = h('figure', { class: 'frame' });
    grid.append(frame);
    fill(frame, h('span', { class: 'square' }), h('figcaption', {}, longText(task.prompt)));
    imageUrl(task.result_url).then((url) => {
      frame.firstChild.append(h('img', { src: url, alt: task.prompt }));
    }).catch(() => {});
  }
}

export async function speechPage(root) {
  const message = h('div', { class: 'message' });
  const transcript = h('div', { class: 'transcript', 'data-list': 'transcript' });
  const form = h('form', { class: 'card', 'data-form': 'speech' },
    h('h1', {}, 'Speech to text'),
    h('label', {}, 'Audio file', h('input', { name: 'file', type: 'file', accept: 'audio/*', required: true })),
    h('div', { class: 'row' }, h('button', { type: 'submit' }, 'Transcribe')),
    message);
  fill(root, form, transcript);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const data = new FormData();
    data.append('file', form.file.files[0]);
    notice(message, 'Transcribing…', 'ok');
    try {
      const answer = await api('POST', '/api/v1/speech/transcribe', data);
      notice(message, answer.code === 0 ? `Language: ${answer.language || 'unknown'}` : answer.message || 'No transcript', answer.code === 0 ? 'ok' : 'error');
      fill(transcript, (answer.segments || []).map((s) =>
        h('p', {}, h('span', { class: 'muted' }, `${s.start.toFixed(1)}–${s.end.toFixed(1)} s `), s.text)));
    } catch (error) {
      notice(message, error.message);
    }
  });
}

// The admin pages: overview with charts and the pause switch, instances, every task
// with filters and bulk actions, a task's detail, users, and the audit log.

import { api, imageUrl, query } from '/console/api.js';
import { h, fill, longText, badge, time, bytes, confirmAction, notice } from '/console/dom.js';
import { lineChart, barChart } from '/console/charts.js';

const STATUSES = ['QUEUED', 'RUNNING', 'DONE', 'FAILED', 'CANCELLED'];
const BUCKETS = 12;
const BUCKET_MS = 5 * 60 * 1000;
const PAGE = 25;

/** Runs `tick` now and every `ms`; answers the function that stops it. */
function every(ms, tick) {
  let stopped = false;
  let timer = null;
  const run = async () => {
    try { await tick(); } catch { /* shown by the page; try again at the next tick */ }
    if (!stopped) timer = setTimeout(run, ms);
  };
  run();
  return () => { stopped = true; clearTimeout(timer); };
}

function card(title, value, note = '') {
  return h('div', { class: 'stat' }, h('span', { class: 'stat-title' }, title),
    h('span', { class: 'stat-value' }, value), h('span', { class: 'stat-note muted' }, note));
}

async function countFinished(status, after, before) {
  const page = await api('GET', `/api/v1/admin/tasks${query({
    statuses: status, finished_after: after.toISOString(), finished_before: before.toISOString(), limit: 1,
  })}`);
  return page.total;
}

export async function overviewPage(root) {
  const message = h('div', { class: 'message' });
  const cards = h('div', { class: 'stats', 'data-list': 'stats' });
  const alerts = h('ul', { class: 'alerts', 'data-list': 'alerts' });
  const pause = h('input', { type: 'checkbox', name: 'paused', role: 'switch' });
  const charts = h('div', { class: 'charts' },
    h('figure', {}, h('figcaption', {}, 'Queued tasks, last hour'), h('div', { 'data-chart': 'depth' })),
    h('figure', {}, h('figcaption', {}, 'Tasks done per 5 minutes, last hour'), h('div', { 'data-chart': 'throughput' })),
    h('figure', {}, h('figcaption', {}, 'Failure rate per 5 minutes, last hour'), h('div', { 'data-chart': 'failures' })));
  fill(root, h('h1', {}, 'Overview'),
    h('label', { class: 'switch' }, pause, ' Pause dispatching (running tasks finish, submissions are still queued)'),
    message, cards, h('h2', {}, 'Alerts'), alerts, charts);
  pause.addEventListener('change', async () => {
    try {
      await api('POST', `/api/v1/admin/queue/${pause.checked ? 'pause' : 'resume'}`);
      notice(message, pause.checked ? 'Dispatching paused' : 'Dispatching resumed', 'ok');
    } catch (error) {
      pause.checked = !pause.checked;
      notice(message, error.message);
    }
    refresh().catch(() => {});
  });
  let failureRate = 0;
  const refresh = async () => {
    const s = await api('GET', '/api/v1/system/stats');
    pause.checked = s.paused;
    fill(cards,
      card('Queue', `${s.queue_length} / ${s.queue_capacity}`, `${s.queue_usage}% used`),
      card('Workers busy', `${s.busy_workers} / ${s.workers}`),
      card('Image instances', `${s.image_instances.healthy} / ${s.image_instances.total} healthy`, `${s.image_instances.in_flight} in flight, ${s.image_instances.waiting} waiting`),
      card('Speech instances', `${s.speech_instances.healthy} / ${s.speech_instances.total} healthy`, `${s.speech_instances.in_flight} in flight`),
      card('Database', bytes(s.database.bytes), s.database.free_bytes !== undefined ? `${bytes(s.database.free_bytes)} free` : ''),
      card('Dispatching', s.paused ? 'paused' : 'running'));
    const raised = [];
    if (s.queue_usage > 80) raised.push(`Queue ${s.queue_usage}% full (alert above 80%)`);
    if (s.image_instances.total > 0 && s.image_instances.healthy === 0) raised.push('No healthy image instance');
    if (s.image_instances.waiting > 0) raised.push(`${s.image_instances.waiting} tasks waiting for an instance`);
    if (failureRate > 0.1) raised.push(`${Math.round(failureRate * 100)}% of tasks failed in the last hour`);
    if (s.paused) raised.push('Dispatching is paused');
    fill(alerts, raised.length ? raised.map((a) => h('li', { class: 'alert' }, a)) : h('li', { class: 'muted' }, 'None'));
  };
  const stats = every(5000, refresh);
  const history = every(60000, async () => {
    // The gateway samples the shared queue's depth every stats.depth_sample_secs.
    const depth = await api('GET', '/api/v1/admin/queue/history?minutes=60');
    fill(root.querySelector('[data-chart=depth]'), lineChart('Queued tasks', depth.samples.map((s) => s.queued)));
    const now = Date.now();
    const starts = Array.from({ length: BUCKETS }, (_, i) => new Date(now - (BUCKETS - i) * BUCKET_MS));
    const counted = await Promise.all(starts.map(async (start) => {
      const end = new Date(start.getTime() + BUCKET_MS);
      const [done, failed] = await Promise.all([countFinished('DONE', start, end), countFinished('FAILED', start, end)]);
      const label = start.toTimeString().slice(0, 5);
      return { label, done, failed };
    }));
    const done = counted.reduce((n, b) => n + b.done, 0);
    const failed = counted.reduce((n, b) => n + b.failed, 0);
    failureRate = done + failed ? failed / (done + failed) : 0;
    fill(root.querySelector('[data-chart=throughput]'), barChart('Tasks done', counted.map((b) => ({ label: b.label, value: b.done }))));
    fill(root.querySelector('[data-chart=failures]'), barChart('Failure rate', counted.map((b) => ({
      label: b.label, value: b.done + b.failed ? Math.round((b.failed * 100) / (b.done + b.failed)) : 0,
    })), '%', 100));
  });
  return () => { stats(); history(); };
}

export async function instancesPage(root) {
  const message = h('div', { class: 'message' });
  const body = h('tbody', { 'data-list': 'instances' });
  const form = h('form', { class: 'card inline', 'data-form': 'add-instance' },
    h('label', {}, 'Kind', h('select', { name: 'kind' }, h('option', { value: 'image' }, 'image'), h('option', { value: 'speech' }, 'speech'))),
    h('label', { class: 'grow' }, 'URL', h('input', { name: 'url', type: 'url', required: true, placeholder: 'http://10.0.0.7:8000' })),
    h('label', {}, 'Capacity', h('input', { name: 'capacity', type: 'number', min: 1, max: 1024, value: 1 })),
    h('button', { type: 'submit' }, 'Add'));
  fill(root, h('h1', {}, 'Instances'), message,
    h('div', { class: 'scroll' }, h('table', {},
      h('thead', {}, h('tr', {}, ['Id', 'Kind', 'URL', 'State', 'In flight', 'Latency', 'Done / failed', ''].map((c) => h('th', {}, c)))),
      body)),
    h('h2', {}, 'Add an instance'), form);
  const act = async (what, call) => {
    try { await call(); notice(message, what, 'ok'); await refresh(); } catch (error) { notice(message, error.message); }
  };
  const refresh = async () => {
    const instances = await api('GET', '/api/v1/admin/instances');
    fill(body, instances.map((i) => h('tr', { 'data-instance': i.id, 'data-url': i.url },
      h('td', {}, i.id), h('td', {}, i.kind), h('td', { class: 'cell-url' }, longText(i.url)),
      h('td', {}, badge(i.state)), h('td', {}, `${i.in_flight} / ${i.capacity}`),
      h('td', {}, i.latency_ms ? `${Math.round(i.latency_ms)} ms` : '—'),
      h('td', {}, `${i.completed} / ${i.failed}`),
      h('td', { class: 'actions' },
        i.state === 'draining' ? null : h('button', {
          type: 'button', class: 'secondary small', 'data-action': i.state === 'disabled' ? 'enable' : 'disable',
          onclick: () => act(i.state === 'disabled' ? 'Enabled' : 'Disabled', () => api('PATCH', `/api/v1/admin/instances/${i.id}`, { enabled: i.state === 'disabled' })),
        }, i.state === 'disabled' ? 'Enable' : 'Disable'),
        i.state === 'draining' ? null : h('button', {
          type: 'button', class: 'danger small', 'data-action': 'drain',
          onclick: async () => {
            if (await confirmAction(`Drain ${i.url}? Its calls in flight finish, then it is removed.`, 'Drain')) {
              act('Draining', () => api('DELETE', `/api/v1/admin/instances/${i.id}`));
            }
          },
        }, 'Drain')))));
  };
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    act('Added', () => api('POST', '/api/v1/admin/instances', {
      kind: form.kind.value, url: form.url.value, capacity: Number(form.capacity.value),
    }));
  });
  return every(3000, refresh);
}

/** The task filter from the form, as the API spells it. */
function filterOf(form) {
  const statuses = STATUSES.filter((s) => form[`status-${s}`].checked);
  const at = (name) => (form[name].value ? new Date(form[name].value).toISOString() : '');
  return {
    statuses: statuses.join(','), users: form.users.value.trim(), instances: form.instances.value.trim(),
    q: form.q.value, created_after: at('created_after'), created_before: at('created_before'),
  };
}

export async function tasksPage(root, params) {
  const message = h('div', { class: 'message' });
  const form = h('form', { class: 'card filters', 'data-form': 'task-filter' },
    h('fieldset', {}, h('legend', {}, 'Status'), STATUSES.map((s) =>
      h('label', { class: 'check' }, h('input', { type: 'checkbox', name: `status-${s}`, checked: (params.get('statuses') || '').split(',').includes(s) }), s))),
    h('label', {}, 'User ids', h('input', { name: 'users', value: params.get('users') || '', placeholder: '1,2' })),
    h('label', {}, 'Instance URLs', h('input', { name: 'instances', value: params.get('instances') || '' })),
    h('label', {}, 'Prompt contains', h('input', { name: 'q', value: params.get('q') || '', maxlength: 256 })),
    h('label', {}, 'Created after', h('input', { name: 'created_after', type: 'datetime-local' })),
    h('label', {}, 'Created before', h('input', { name: 'created_before', type: 'datetime-local' })),
    h('div', { class: 'row' },
      h('button', { type: 'submit' }, 'Filter'),
      h('button', { type: 'button', class: 'secondary', 'data-action': 'bulk-retry', onclick: () => bulk('retry') }, 'Retry matching'),
      h('button', { type: 'button', class: 'danger', 'data-action': 'bulk-cancel', onclick: () => bulk('cancel') }, 'Cancel matching')));
  const summary = h('p', { class: 'muted', 'data-total': '' });
  const body = h('tbody', { 'data-list': 'tasks' });
  const prev = h('button', { type: 'button', class: 'secondary', disabled: true }, 'Previous');
  const next = h('button', { type: 'button', class: 'secondary', disabled: true }, 'Next');
  fill(root, h('h1', {}, 'Tasks'), form, message, summary,
    h('div', { class: 'scroll' }, h('table', {},
      h('thead', {}, h('tr', {}, ['Task', 'User', 'Prompt', 'Status', 'Attempts', 'Instance', 'Created', 'Error'].map((c) => h('th', {}, c)))),
      body)),
    h('div', { class: 'row pager' }, prev, next));

  let filter = filterOf(form);
  const cursors = [];
  let from = null;
  const load = async () => {
    const page = await api('GET', `/api/v1/admin/tasks${query({ ...filter, limit: PAGE, from })}`);
    summary.textContent = `${page.total} matching`;
    fill(body, page.results.map((t) => h('tr', { 'data-task': t.task_id },
      h('td', {}, h('a', { href: `#/admin/task?id=${encodeURIComponent(t.task_id)}`, class: 'mono' }, t.task_id.slice(0, 8))),
      h('td', {}, t.user_id), h('td', { class: 'cell-text' }, longText(t.prompt)), h('td', {}, badge(t.status)),
      h('td', {}, t.attempts), h('td', { class: 'cell-url' }, longText(t.instance)), h('td', {}, time(t.created_at)),
      h('td', { class: 'cell-text' }, longText(t.error)))));
    if (!page.results.length) fill(body, h('tr', {}, h('td', { colspan: 8, class: 'muted' }, 'No task matches.')));
    prev.disabled = cursors.length === 0;
    next.disabled = page.next === null;
    next.dataset.from = page.next ?? '';
  };
  next.addEventListener('click', () => { cursors.push(from); from = Number(next.dataset.from); load(); });
  prev.addEventListener('click', () => { from = cursors.pop() ?? null; load(); });
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    filter = filterOf(form);
    cursors.length = 0;
    from = null;
    notice(message, '');
    load().catch((error) => notice(message, error.message));
  });
  // The confirmation shows how many tasks the action will change.
  const bulk = async (action) => {
    const current = filterOf(form);
    const { statuses, ...rest } = current;
    if (!Object.values(current).some((v) => v)) {
      notice(message, 'Choose at least one filter first.');
      return;
    }
    const acts = action === 'cancel' ? ['QUEUED', 'RUNNING'] : ['FAILED', 'CANCELLED'];
    const chosen = statuses ? statuses.split(',').filter((s) => acts.includes(s)) : acts;
    const affected = chosen.length
      ? (await api('GET', `/api/v1/admin/tasks${query({ ...rest, statuses: chosen.join(','), limit: 1 })}`)).total
      : 0;
    const verb = action === 'cancel' ? 'Cancel' : 'Retry';
    if (!(await confirmAction(`${verb} ${affected} task${affected === 1 ? '' : 's'}?`, verb))) return;
    try {
      const done = await api('POST', `/api/v1/admin/tasks/${action}${query(current)}`);
      const skipped = done.skipped ? ` (${done.skipped} left: the queue is full)` : '';
      notice(message, `${action === 'cancel' ? 'Cancelled' : 'Retried'} ${done.count}${skipped}`, 'ok');
      await load();
    } catch (error) {
      notice(message, error.message);
    }
  };
  await load();
}

export async function taskPage(root, params) {
  const id = params.get('id');
  const detail = await api('GET', `/api/v1/admin/tasks/${encodeURIComponent(id)}`);
  const t = detail.task;
  const image = h('div', { class: 'square detail-image' });
  const field = (name, value) => [h('dt', {}, name), h('dd', {}, value)];
  fill(root, h('p', {}, h('a', { href: '#/admin/tasks' }, '← Tasks')), h('h1', { class: 'mono' }, t.task_id),
    h('div', { class: 'detail' },
      h('dl', {}, field('Status', badge(t.status)), field('User', t.user_id), field('Priority', t.priority),
        field('Attempts', t.attempts), field('Instance', longText(t.instance)), field('Created', time(t.created_at)),
        field('Started', time(t.started_at)), field('Finished', time(t.finished_at)),
        field('Prompt', h('span', { class: 'wrap' }, t.prompt)),
        field('Negative prompt', t.negative_prompt ? h('span', { class: 'wrap' }, t.negative_prompt) : '—'),
        field('Error', t.error ? h('pre', { class: 'wrap error-text' }, t.error) : '—')),
      image),
    h('h2', {}, 'Events'),
    h('ol', { class: 'events', 'data-list': 'events' }, detail.events.map((e) => h('li', {},
      time(e.at), ' ', badge(e.type), e.attempt ? ` attempt ${e.attempt}` : '', e.instance ? ` on instance ${e.instance}` : '',
      e.error ? h('div', { class: 'error-text' }, longText(e.error)) : null))));
  if (t.image_id) {
    imageUrl(`/api/v1/admin/images/${t.image_id}`).then((url) => image.append(h('img', { src: url, alt: t.prompt }))).catch(() => {});
  }
}

export async function usersPage(root) {
  const message = h('div', { class: 'message' });
  const body = h('tbody', { 'data-list': 'users' });
  const more = h('button', { type: 'button', class: 'secondary', hidden: true }, 'Next');
  fill(root, h('h1', {}, 'Users'), message, h('div', { class: 'scroll' }, h('table', {},
    h('thead', {}, h('tr', {}, ['Id', 'Name', 'Role', 'Tasks (queued / running / done / failed / cancelled)', ''].map((c) => h('th', {}, c)))),
    body)), h('div', { class: 'row pager' }, more));
  let from = null;
  const change = async (u, body) => {
    try {
      await api('PATCH', `/api/v1/admin/users/${u.id}`, body);
      notice(message, `Changed ${u.username}`, 'ok');
      from = null;
      await load();
    } catch (error) { notice(message, error.message); }
  };
  const load = async () => {
    const page = await api('GET', `/api/v1/admin/users${query({ limit: 50, from })}`);
    fill(body, page.results.map((u) => h('tr', { 'data-user': u.id },
      h('td', {}, u.id), h('td', { class: 'cell-text' }, longText(u.username)),
      h('td', {}, h('select', { 'aria-label': 'Role', onchange: (e) => change(u, { role: e.target.value }) },
        ['user', 'vip', 'admin'].map((r) => h('option', { value: r, selected: r === u.role }, r)))),
      h('td', { class: 'mono' }, `${u.tasks.queued} / ${u.tasks.running} / ${u.tasks.done} / ${u.tasks.failed} / ${u.tasks.cancelled}`),
      h('td', {}, h('button', { type: 'button', class: u.disabled ? 'secondary small' : 'danger small', onclick: () => change(u, { disabled: !u.disabled }) },
        u.disabled ? 'Enable' : 'Disable')))));
    more.hidden = page.next === null;
    more.dataset.from = page.next ?? '';
  };
  more.addEventListener('click', () => { from = Number(more.dataset.from); load(); });
  await load();
}

export async function auditPage(root) {
  const body = h('tbody', { 'data-list': 'audit' });
  const prev = h('button', { type: 'button', class: 'secondary', disabled: true }, 'Previous');
  const next = h('button', { type: 'button', class: 'secondary', disabled: true }, 'Next');
  fill(root, h('h1', {}, 'Audit log'), h('div', { class: 'scroll' }, h('table', {},
    h('thead', {}, h('tr', {}, ['When', 'Who', 'Action', 'Target', 'Filter or change', 'Count'].map((c) => h('th', {}, c)))),
    body)), h('div', { class: 'row pager' }, prev, next));
  const cursors = [];
  let from = null;
  const load = async () => {
    const page = await api('GET', `/api/v1/admin/audit${query({ limit: PAGE, from })}`);
    fill(body, page.results.map((e) => h('tr', {},
      h('td', {}, time(e.at)), h('td', {}, e.actor), h('td', { class: 'mono' }, e.action), h('td', { class: 'cell-url' }, longText(e.target)),
      h('td', { class: 'cell-text mono' }, longText(e.filter ? JSON.stringify(e.filter) : '')), h('td', {}, e.count ?? '—'))));
    if (!page.results.length) fill(body, h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'Nothing yet.')));
    prev.disabled = cursors.length === 0;
    next.disabled = page.next === null;
    next.dataset.from = page.next ?? '';
  };
  next.addEventListener('click', () => { cursors.push(from); from = Number(next.dataset.from); load(); });
  prev.addEventListener('click', () => { from = cursors.pop() ?? null; load(); });
  await load();
}

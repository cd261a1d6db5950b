// The console's frame: signing in and out, the navigation and the page router. Pages
// are hash routes (`#/submit`, `#/admin/tasks?…`), so a reload keeps the page.

import { api, current, signIn, signOut, ApiError } from '/console/api.js';
import { h, fill, notice } from '/console/dom.js';
import * as user from '/console/user.js';
import * as admin from '/console/admin.js';

const pages = {
  submit: { title: 'Submit', render: user.submitPage },
  gallery: { title: 'Gallery', render: user.galleryPage },
  speech: { title: 'Speech', render: user.speechPage },
  admin: { title: 'Overview', render: admin.overviewPage, admin: true },
  'admin/instances': { title: 'Instances', render: admin.instancesPage, admin: true },
  'admin/tasks': { title: 'Tasks', render: admin.tasksPage, admin: true },
  'admin/task': { title: 'Task', render: admin.taskPage, admin: true, hidden: true },
  'admin/users': { title: 'Users', render: admin.usersPage, admin: true },
  'admin/audit': { title: 'Audit', render: admin.auditPage, admin: true },
};

const view = document.getElementById('view');
let leave = null;

function route() {
  const [path, search] = location.hash.replace(/^#\/?/, '').split('?');
  return { name: path || 'submit', params: new URLSearchParams(search || '') };
}

async function render() {
  if (leave) { leave(); leave = null; }
  const account = current();
  renderNav(account);
  if (!account) return loginPage();
  let { name, params } = route();
  let page = pages[name];
  if (!page || (page.admin && account.user.role !== 'admin')) {
    name = 'submit';
    page = pages.submit;
  }
  document.title = `${page.title} · infergate`;
  for (const link of document.querySelectorAll('#nav a')) {
    link.toggleAttribute('aria-current', link.dataset.page === name);
  }
  const container = h('section', { class: 'page', 'data-page': name });
  fill(view, container);
  try {
    leave = (await page.render(container, params)) || null;
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) {
      notice(container, `Could not load the page: ${error.message}`);
    }
  }
}

function renderNav(account) {
  const nav = document.getElementById('nav');
  const who = document.getElementById('who');
  if (!account) {
    fill(nav);
    fill(who);
    return;
  }
  const isAdmin = account.user.role === 'admin';
  const links = Object.entries(pages)
    .filter(([, page]) => !page.hidden && (!page.admin || isAdmin))
    .map(([name, page]) => h('a', { href: `#/${name}`, 'data-page': name }, page.title));
  fill(nav, links);
  fill(who, h('span', { class: 'muted' }, `${account.user.username} (${account.user.role})`), ' ',
    h('button', { type: 'button', class: 'secondary small', onclick: () => { signOut(); render(); } }, 'Sign out'));
}

function loginPage() {
  document.title = 'Sign in · infergate';
  const message = h('div', { class: 'message' });
  const form = h('form', { class: 'card narrow', 'data-form': 'login' },
    h('h1', {}, 'Sign in'),
    h('label', {}, 'Username', h('input', { name: 'username', autocomplete: 'username', required: true, minlength: 3, maxlength: 20 })),
    h('label', {}, 'Password', h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true, minlength: 8, maxlength: 128 })),
    h('div', { class: 'row' },
      h('button', { type: 'submit' }, 'Sign in'),
      h('button', { type: 'button', class: 'secondary', 'data-action': 'register', onclick: () => submit(true) }, 'Create account')),
    message);
  const submit = async (register) => {
    if (!form.reportValidity()) return;
    const credentials = { username: form.username.value, password: form.password.value };
    try {
      if (register) await api('POST', '/register', credentials);
      signIn(await api('POST', '/login', credentials));
      if (!location.hash) location.hash = '#/submit';
      render();
    } catch (error) {
      notice(message, error.message);
    }
  };
  form.addEventListener('submit', (event) => { event.preventDefault(); submit(false); });
  fill(view, form);
}

window.addEventListener('hashchange', render);
window.addEventListener('signed-out', render);
render();

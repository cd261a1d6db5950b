// The console's only way to the gateway: the same JSON API, with the user's token in
// the Authorization header (never in a URL). Event streams open with a single-use
// ticket, since EventSource cannot send a header.

const KEY = 'infergate.account';
let account = JSON.parse(sessionStorage.getItem(KEY) || 'null');

export function current() { return account; }

export function signIn(login) {
  account = { token: login.token, user: login.user };
  sessionStorage.setItem(KEY, JSON.stringify(account));
}

export function signOut() {
  account = null;
  sessionStorage.removeItem(KEY);
  for (const url of images.values()) URL.revokeObjectURL(url);
  images.clear();
}

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error : `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
  }
}

/** Calls the API: `body` is sent as JSON, or as it is when it is FormData. */
export async function api(method, path, body) {
  const headers = {};
  if (account) headers.Authorization = `Bearer ${account.token}`;
  let payload;
  if (body instanceof FormData) {
    payload = body;
  } else if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  const response = await fetch(path, { method, headers, body: payload });
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (!response.ok) {
    if (response.status === 401 && account) {
      signOut();
      window.dispatchEvent(new Event('signed-out'));
    }
    throw new ApiError(response.status, json);
  }
  return json;
}

/** Query string of the non-empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

const images = new Map();

/** An image the API serves behind the token, as a blob: URL (kept until sign-out). */
export async function imageUrl(path) {
  if (images.has(path)) return images.get(path);
  const response = await fetch(path, { headers: { Authorization: `Bearer ${account.token}` } });
  if (!response.ok) throw new ApiError(response.status, null);
  const url = URL.createObjectURL(await response.blob());
  images.set(path, url);
  return url;
}

/**
 * Follows the user's task events (`GET /api/v1/events`), each passed to `onEvent`.
 * A dropped stream is opened again with a fresh ticket, after the last event seen, so
 * nothing is missed. Answers a function that stops it.
 */
export function follow(onEvent) {
  let source = null;
  let last = null;
  let stopped = false;
  let retry = null;
  const open = async () => {
    if (stopped || !account) return;
    try {
      const { ticket } = await api('POST', '/api/v1/events/ticket');
      if (stopped) return;
      source = new EventSource(`/api/v1/events${query({ ticket, after: last })}`);
      source.onmessage = (message) => {
        if (message.lastEventId) last = message.lastEventId;
        try { onEvent(JSON.parse(message.data)); } catch { /* a frame we do not know */ }
      };
      source.onerror = () => {
        source.close();
        retry = setTimeout(open, 2000);
      };
    } catch {
      retry = setTimeout(open, 5000);
    }
  };
  open();
  return () => {
    stopped = true;
    clearTimeout(retry);
    if (source) source.close();
  };
}

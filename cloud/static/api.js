// The REST API client: bearer tokens (the session shared by the browser's tabs, see below), one
// refresh on 401, and errors as ApiError carrying the problem+json body and its per-field
// messages.

export class ApiError extends Error {
  constructor(status, problem, retryAfter = null) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.retryAfter = retryAfter;  // seconds, from a 429's or 503's Retry-After
    this.problem = problem || {};
    this.errors = Array.isArray(this.problem.errors) ? this.problem.errors : [];
  }

  // {field path: message}, e.g. {"body.changes.threshold.for_s": "Input should be ≥ 0"}
  get fields() {
    const out = {};
    for (const err of this.errors) out[err.field] = err.message;
    return out;
  }
}

// The refresh token is the browser's session, shared by every tab, so a new tab or a reload
// stays signed in; the access token is this tab's (sessionStorage). A refresh token is spent
// when used (rotation; the server treats a replayed one as stolen and ends every session), so
// tabs take turns: the refresh runs under a Web Lock, reads the token only once it holds it, and
// lets go only once the new one is stored. The token that counts is kept in IndexedDB, whose
// transactions every tab sees in order (localStorage is synced between a browser's processes
// after the fact: a tab could read the token another had just spent). localStorage holds a copy
// for what must be synchronous (is anyone signed in?) and for its `storage` event: a sign-out
// in one tab removes it, and the other tabs see that and follow.
const ACCESS = 'smartfarm.access';
const EXPIRES = 'smartfarm.access-expires';
const REFRESH = 'smartfarm.refresh';
const LOCK = 'smartfarm.refresh';
const EARLY_MS = 30000;  // refresh this long before the access token expires

function stored(area, key) {
  try {
    return area.getItem(key);
  } catch (err) {
    return null;  // storage disabled (private mode in some browsers): a session per tab
  }
}

// The shared refresh token in IndexedDB (null: none, or IndexedDB unavailable).
const IDB_NAME = 'smartfarm-auth';
const IDB_STORE = 'session';
let idbOpening = null;

function idb() {
  if (!idbOpening) {
    idbOpening = new Promise((resolve, reject) => {
      const req = indexedDB.open(IDB_NAME, 1);
      req.onupgradeneeded = () => req.result.createObjectStore(IDB_STORE);
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    }).catch((err) => { idbOpening = null; throw err; });
  }
  return idbOpening;
}

async function idbRefresh() {
  try {
    const db = await idb();
    return await new Promise((resolve, reject) => {
      const req = db.transaction(IDB_STORE, 'readonly').objectStore(IDB_STORE).get(REFRESH);
      req.onsuccess = () => resolve(req.result || null);
      req.onerror = () => reject(req.error);
    });
  } catch (err) {
    return null;
  }
}

// Resolves once committed: a tab that takes the lock next reads this value.
async function idbSetRefresh(token) {
  try {
    const db = await idb();
    await new Promise((resolve, reject) => {
      const tx = db.transaction(IDB_STORE, 'readwrite');
      if (token) tx.objectStore(IDB_STORE).put(token, REFRESH);
      else tx.objectStore(IDB_STORE).delete(REFRESH);
      tx.oncomplete = resolve;
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  } catch (err) {
    // no IndexedDB (some private modes): localStorage alone
  }
}

export class Api {
  constructor() {
    this.onSignedOut = () => {};
    this.onSignedIn = () => {};
    this._refreshing = null;
    this._memoryRefresh = null;
    // An older dashboard kept the refresh token per tab: carry it over.
    const legacy = stored(sessionStorage, REFRESH);
    if (legacy) {
      if (!stored(localStorage, REFRESH)) this._setRefresh(legacy);
      sessionStorage.removeItem(REFRESH);
    }
    this.access = stored(sessionStorage, ACCESS);
    this.accessExpires = Number(stored(sessionStorage, EXPIRES)) || 0;
    if (!this.refreshToken) this._dropAccess();  // signed out in another tab while this one was away
    window.addEventListener('storage', (event) => this._storageChanged(event));
  }

  get refreshToken() {
    return stored(localStorage, REFRESH) || this._memoryRefresh;
  }

  // Store the shared refresh token (null: signed out); resolves once every tab can read it.
  _setRefresh(token) {
    this._memoryRefresh = token;
    try {
      if (token) localStorage.setItem(REFRESH, token);
      else localStorage.removeItem(REFRESH);
    } catch (err) {
      // kept in memory only
    }
    return idbSetRefresh(token);
  }

  get signedIn() {
    return Boolean(this.refreshToken || this.access);
  }

  _storageChanged(event) {
    if (event.storageArea !== localStorage || (event.key !== REFRESH && event.key !== null)) return;
    const now = event.key === null ? null : event.newValue;
    if (!now) {
      this._memoryRefresh = null;
      if (this.access) {
        this._dropAccess();
        this.onSignedOut('elsewhere');
      }
    } else if (!event.oldValue && !this.access) {
      this.onSignedIn();  // signed in in another tab
    }
    // Otherwise another tab rotated the token: this tab's access token stays good.
  }

  _dropAccess() {
    this.access = null;
    this.accessExpires = 0;
    try {
      sessionStorage.removeItem(ACCESS);
      sessionStorage.removeItem(EXPIRES);
    } catch (err) {
      // nothing stored
    }
  }

  async _store(tokens) {
    this.access = tokens.access_token;
    this.accessExpires = Date.now() + tokens.expires_in * 1000;
    try {
      sessionStorage.setItem(ACCESS, this.access);
      sessionStorage.setItem(EXPIRES, String(this.accessExpires));
    } catch (err) {
      // kept in memory only
    }
    await this._setRefresh(tokens.refresh_token);
  }

  // Forget this browser's session (every tab follows). With a token given, only if it is still
  // the current one: a tab that failed with an old token must not sign out a newer sign-in.
  // Resolves once stored.
  forget(token) {
    this._dropAccess();
    if (token === undefined || this.refreshToken === token) return this._setRefresh(null);
    return Promise.resolve();
  }

  // Tokens from another way in (an accepted invitation): this browser is signed in with them.
  signInWith(tokens) {
    return this._store(tokens);
  }

  async login(email, password) {
    await this._store(await this.request('POST', '/api/auth/login', { email, password }, { auth: false }));
  }

  // Sign out of this browser (every tab of it follows); the shell then shows the sign-in page.
  async logout() {
    const token = (await idbRefresh()) || this.refreshToken;
    await this.forget();
    if (token) {
      try {
        await this.request('POST', '/api/auth/logout', { refresh_token: token }, { auth: false });
      } catch (err) {
        console.warn('logout', err);
      }
    }
    this.onSignedOut('logout');
  }

  // Sign out everywhere: the server revokes every session of the user (other browsers and
  // phones included), then this browser forgets its own and the shell shows the sign-in page
  // with how many sessions ended. Resolves to that number; rejects (signed in still) on failure.
  async logoutEverywhere() {
    const answer = await this.request('POST', '/api/auth/logout-all');
    await this.forget();
    this.onSignedOut('everywhere', answer.signed_out);
    return answer.signed_out;
  }

  // A usable access token for this tab (a new tab or an expiring token gets one from the
  // shared refresh token first), so no request goes out only to be refused.
  async ensureAccess() {
    if (this.access && Date.now() < this.accessExpires - EARLY_MS) return;
    if (!this.refreshToken) return;
    await this.refresh();
  }

  // A new access token from the refresh token; concurrent callers (of every tab) share one.
  refresh() {
    if (!this._refreshing) {
      const run = async () => {
        // Read under the lock, from IndexedDB: another tab may have just rotated it.
        if (!this.refreshToken) throw new ApiError(401, { detail: 'signed out' });
        const token = (await idbRefresh()) || this.refreshToken;
        try {
          const tokens = await this.request(
            'POST', '/api/auth/refresh', { refresh_token: token }, { auth: false, retry: false });
          await this._store(tokens);  // stored before the lock goes to the next tab
        } catch (err) {
          if (err.status === 401) {
            // The session is over, unless another tab has meanwhile signed in afresh.
            this._dropAccess();
            const current = await idbRefresh();
            if (!current || current === token) await this._setRefresh(null);
            this.onSignedOut('expired');  // revoked (signed out everywhere) or expired
          }
          throw err;
        }
      };
      const locks = typeof navigator !== 'undefined' && navigator.locks;
      const pending = locks ? locks.request(LOCK, run) : run();
      this._refreshing = pending.finally(() => { this._refreshing = null; });
    }
    return this._refreshing;
  }

  async _fetch(method, path, body, { auth = true, retry = true, accept = 'application/json' }) {
    if (auth && retry) await this.ensureAccess();
    const headers = { Accept: accept };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (auth && this.access) headers.Authorization = `Bearer ${this.access}`;
    const resp = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (resp.status === 401 && auth && retry && this.refreshToken) {
      await this.refresh();
      return this._fetch(method, path, body, { auth, retry: false, accept });
    }
    if (resp.status === 401 && auth) {
      this.forget();
      this.onSignedOut('expired');
    }
    if (!resp.ok) {
      let problem = null;
      try {
        problem = await resp.json();
      } catch (err) {
        problem = { detail: `HTTP ${resp.status}` };
      }
      const wait = Number(resp.headers.get('Retry-After'));
      throw new ApiError(resp.status, problem, Number.isFinite(wait) && wait > 0 ? wait : null);
    }
    return resp;
  }

  async request(method, path, body, options = {}) {
    const resp = await this._fetch(method, path, body, options);
    return resp.status === 204 ? null : resp.json();
  }

  get(path) {
    return this.request('GET', path);
  }

  // A non-JSON answer (a file to download) as text.
  async text(path, accept = 'text/plain') {
    const resp = await this._fetch('GET', path, undefined, { accept });
    return resp.text();
  }

  async blob(path, accept) {
    const resp = await this._fetch('GET', path, undefined, { accept });
    return resp.blob();
  }

  // Every item of a paged list (cursor pagination), up to maxPages pages.
  async all(path, maxPages = 20) {
    const items = [];
    let cursor = null;
    for (let page = 0; page < maxPages; page += 1) {
      const sep = path.includes('?') ? '&' : '?';
      const url = cursor ? `${path}${sep}cursor=${encodeURIComponent(cursor)}` : path;
      const answer = await this.get(url);
      items.push(...answer.items);
      cursor = answer.next_cursor;
      if (!cursor) break;
    }
    return items;
  }
}

// Room, device, edge, rule and command ids are unique only within a farm: a call that names one
// names its farm too, or the API answers 409 when the id is in more than one of the user's farms.
export function inFarm(url, farmId) {
  return `${url}${url.includes('?') ? '&' : '?'}farm_id=${encodeURIComponent(farmId)}`;
}

export function path(strings, ...values) {
  // A template tag that escapes every interpolated path segment or query value.
  return strings.reduce((out, part, i) =>
    out + part + (i < values.length ? encodeURIComponent(values[i]) : ''), '');
}

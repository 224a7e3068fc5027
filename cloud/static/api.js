// The REST API client: bearer tokens (kept for this tab only), one refresh on 401, and errors
// as ApiError carrying the problem+json body and its per-field messages.

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
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

const ACCESS = 'smartfarm.access';
const REFRESH = 'smartfarm.refresh';

export class Api {
  constructor() {
    this.access = sessionStorage.getItem(ACCESS);
    this.refreshToken = sessionStorage.getItem(REFRESH);
    this.onSignedOut = () => {};
    this._refreshing = null;
  }

  get signedIn() {
    return Boolean(this.access);
  }

  _store(tokens) {
    this.access = tokens.access_token;
    this.refreshToken = tokens.refresh_token;
    sessionStorage.setItem(ACCESS, this.access);
    sessionStorage.setItem(REFRESH, this.refreshToken);
  }

  forget() {
    this.access = null;
    this.refreshToken = null;
    sessionStorage.removeItem(ACCESS);
    sessionStorage.removeItem(REFRESH);
  }

  async login(email, password) {
    this._store(await this.request('POST', '/api/auth/login', { email, password }, { auth: false }));
  }

  async logout() {
    const token = this.refreshToken;
    this.forget();
    if (token) {
      try {
        await this.request('POST', '/api/auth/logout', { refresh_token: token }, { auth: false });
      } catch (err) {
        console.warn('logout', err);
      }
    }
  }

  // A new access token from the refresh token; concurrent callers share one request.
  refresh() {
    if (!this._refreshing) {
      this._refreshing = (async () => {
        if (!this.refreshToken) throw new ApiError(401, { detail: 'signed out' });
        const tokens = await this.request(
          'POST', '/api/auth/refresh', { refresh_token: this.refreshToken },
          { auth: false, retry: false });
        this._store(tokens);
      })().finally(() => { this._refreshing = null; });
    }
    return this._refreshing;
  }

  async _fetch(method, path, body, { auth = true, retry = true, accept = 'application/json' }) {
    const headers = { Accept: accept };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (auth && this.access) headers.Authorization = `Bearer ${this.access}`;
    const resp = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (resp.status === 401 && auth && retry && this.refreshToken) {
      try {
        await this.refresh();
      } catch (err) {
        this.forget();
        this.onSignedOut();
        throw err;
      }
      return this._fetch(method, path, body, { auth, retry: false, accept });
    }
    if (resp.status === 401 && auth) {
      this.forget();
      this.onSignedOut();
    }
    if (!resp.ok) {
      let problem = null;
      try {
        problem = await resp.json();
      } catch (err) {
        problem = { detail: `HTTP ${resp.status}` };
      }
      throw new ApiError(resp.status, problem);
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

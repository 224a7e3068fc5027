// The live socket (/api/ws): authenticates with the first message, re-subscribes after every
// reconnect (jittered exponential backoff), pings to notice a dead link, and re-emits each
// server message as an event named by its type. After a reconnect it emits "resync": views
// reload their snapshots, since updates may have been missed while away.

const PING_EVERY_MS = 20000;
const PONG_WITHIN_MS = 10000;

export class Live extends EventTarget {
  constructor(api) {
    super();
    this.api = api;
    this.ws = null;
    this.subs = new Map();
    this.state = 'offline';
    this.attempt = 0;
    this.connectedOnce = false;
    this.stopped = true;
    this._timer = null;
    this._ping = null;
    this._pongBy = 0;
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this._connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this._timer);
    clearInterval(this._ping);
    this.subs.clear();
    if (this.ws) this.ws.close(1000, 'bye');
    this.ws = null;
    this._setState('offline');
  }

  // sub: {farm_id} or {farm_id, room_id} (room ids are per farm); kept across reconnects until
  // unsubscribed.
  subscribe(sub) {
    const key = JSON.stringify(sub);
    if (this.subs.has(key)) return;
    this.subs.set(key, sub);
    this._send({ type: 'subscribe', ...sub });
  }

  unsubscribe(sub) {
    const key = JSON.stringify(sub);
    if (!this.subs.delete(key)) return;
    this._send({ type: 'unsubscribe', ...sub });
  }

  // handlers: {type: handler}; adds them all and returns what removes them again.
  listen(handlers) {
    for (const [type, handler] of Object.entries(handlers)) this.addEventListener(type, handler);
    return () => {
      for (const [type, handler] of Object.entries(handlers)) this.removeEventListener(type, handler);
    };
  }

  unsubscribeAll() {
    for (const sub of [...this.subs.values()]) this.unsubscribe(sub);
  }

  _send(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN && this.state === 'live') {
      this.ws.send(JSON.stringify(msg));
    }
  }

  _setState(state) {
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: state }));
  }

  _connect() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(`${scheme}//${location.host}/api/ws`);
    this.ws = ws;
    this._setState(this.connectedOnce ? 'reconnecting' : 'connecting');
    ws.addEventListener('open', () => {
      ws.send(JSON.stringify({ type: 'auth', token: this.api.access || '' }));
    });
    ws.addEventListener('message', (event) => this._receive(ws, event));
    ws.addEventListener('close', (event) => this._closed(ws, event));
  }

  _receive(ws, event) {
    let msg;
    try {
      msg = JSON.parse(event.data);
    } catch (err) {
      return;
    }
    if (msg.type === 'hello') {
      const again = this.connectedOnce;
      this.connectedOnce = true;
      this.attempt = 0;
      this._setState('live');
      for (const sub of this.subs.values()) ws.send(JSON.stringify({ type: 'subscribe', ...sub }));
      this._startPing(ws);
      if (again) this.dispatchEvent(new CustomEvent('resync', { detail: msg }));
    } else if (msg.type === 'pong') {
      this._pongBy = 0;
    } else if (msg.type === 'error') {
      // A refused request (a subscription that failed): the view would silently stop updating.
      console.warn('live:', msg.status, msg.detail, msg.request || '');
    }
    this.dispatchEvent(new CustomEvent(msg.type, { detail: msg }));
  }

  _startPing(ws) {
    clearInterval(this._ping);
    this._pongBy = 0;
    this._ping = setInterval(() => {
      if (this._pongBy && Date.now() > this._pongBy) {
        ws.close(4000, 'no pong');  // a dead link: reconnect
        return;
      }
      if (!this._pongBy) this._pongBy = Date.now() + PONG_WITHIN_MS;
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'ping' }));
    }, PING_EVERY_MS);
  }

  async _closed(ws, event) {
    if (ws !== this.ws) return;
    clearInterval(this._ping);
    if (this.stopped) return;
    this._setState('reconnecting');
    if (event.code === 4401 || event.code === 4403) {
      try {
        await this.api.refresh();  // expired: a fresh token, then reconnect
      } catch (err) {
        this.stop();
        this.api.forget();
        this.api.onSignedOut();
        return;
      }
    }
    const delay = Math.min(30000, 500 * 2 ** this.attempt) * (0.5 + Math.random() / 2);
    this.attempt += 1;
    this._timer = setTimeout(() => { if (!this.stopped) this._connect(); }, delay);
  }
}

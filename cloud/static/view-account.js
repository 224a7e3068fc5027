// The signed-in user's account (#/account): who they are, and how alarms reach them — email,
// a signed webhook, the lowest severity sent, quiet hours in their time zone, an hourly cap —
// with each channel's health and a "Send test" that really sends and says how each channel did.

import { h, clear, ago } from './dom.js';
import {
  field, checkbox, select, showErrors, errorLine, busy, secret, shortDate, timezones, browserZone,
} from './setup-forms.js';

const SEVERITIES = [
  ['info', 'Everything, including information'],
  ['warning', 'Warnings and critical alarms'],
  ['critical', 'Critical alarms only'],
];
const CHANNEL_NAMES = { in_app: 'In the app', email: 'Email', webhook: 'Webhook' };
const STATUS_NAMES = { sent: 'sent', failed: 'failed', off: 'off' };

export async function accountView(ctx) {
  const { api, main, setCrumbs } = ctx;
  setCrumbs({ label: 'Farms', href: '#/' }, { label: 'Your account' });
  const [me, prefs] = await Promise.all([
    api.get('/api/users/me'),
    api.get('/api/users/me/notification-preferences'),
  ]);

  const emailOn = checkbox('Send alarms by email', { name: 'email_enabled', checked: prefs.email_enabled });
  const email = field('Email address', h('input', { type: 'email', value: prefs.email || '', placeholder: me.email, autocomplete: 'email' }),
    { name: 'email', hint: `empty: your account's address (${me.email})` });
  const webhook = field('Webhook URL', h('input', { type: 'url', value: prefs.webhook_url || '', placeholder: 'https://…', autocomplete: 'off' }),
    { name: 'webhook_url', hint: 'alarms are POSTed as JSON, signed with HMAC-SHA256 (X-Smartfarm-Signature)' });
  const rotate = checkbox('Make a new signing secret', { name: 'rotate_webhook_secret' });
  const severity = field('Send', select(SEVERITIES, prefs.min_severity), { name: 'min_severity' });
  const quiet = checkbox('Quiet hours (critical alarms still come through)', { name: 'quiet', checked: Boolean(prefs.quiet_start) });
  const quietStart = field('Quiet from', h('input', { type: 'time', value: prefs.quiet_start || '22:00' }), { name: 'quiet_start' });
  const quietEnd = field('Quiet until', h('input', { type: 'time', value: prefs.quiet_end || '07:00' }), { name: 'quiet_end' });
  const zone = prefs.updated_at ? prefs.timezone : browserZone();
  const tz = field('Time zone', select(timezones(zone), zone), { name: 'timezone', hint: 'quiet hours are in this time zone' });
  const cap = field('At most per hour', h('input', { type: 'number', min: '1', max: '1000', value: prefs.max_per_hour }),
    { name: 'max_per_hour', hint: 'email and webhook messages; the app shows every alarm' });
  const fields = [emailOn, email, webhook, rotate, severity, quiet, quietStart, quietEnd, tz, cap];
  const quietBox = h('div', { class: 'quiet-hours' }, quietStart.el, quietEnd.el);
  const syncQuiet = () => { quietBox.hidden = !quiet.input.checked; };
  quiet.input.addEventListener('change', syncQuiet);
  syncQuiet();
  const syncEmail = () => { email.el.hidden = !emailOn.input.checked; };
  emailOn.input.addEventListener('change', syncEmail);
  syncEmail();

  const general = errorLine();
  const saved = h('p', { class: 'small muted', role: 'status' });
  const shownSecret = h('div', { class: 'secret-slot', 'aria-live': 'polite' });
  const health = h('ul', { class: 'items health', 'aria-label': 'channel health' });
  const save = h('button', { type: 'submit', class: 'primary', text: 'Save settings' });
  const test = h('button', { type: 'button', text: 'Send test' });
  const results = h('ul', { class: 'items test-results', 'aria-label': 'test results', 'aria-live': 'polite' },
    h('li', { class: 'muted', text: 'No test sent from this page yet: “Send test” sends one now through every channel set up.' }));

  function renderHealth(p) {
    const line = (name, hlt, on) => {
      if (!on) return h('li', { dataset: { channel: name } }, h('span', { class: 'badge', text: 'off' }), `${CHANNEL_NAMES[name]}: not set up`);
      if (hlt.failures) {
        return h('li', { dataset: { channel: name } }, h('span', { class: 'badge critical', text: 'failing' }),
          `${CHANNEL_NAMES[name]}: ${hlt.failures} in a row failed, last ${ago(hlt.last_error_at)}: ${hlt.last_error}`);
      }
      return h('li', { dataset: { channel: name } }, h('span', { class: 'badge ok', text: 'ok' }),
        `${CHANNEL_NAMES[name]}: ${hlt.last_success_at ? `last delivered ${ago(hlt.last_success_at)}` : 'nothing sent yet'}`);
    };
    clear(health,
      line('email', p.email_health, p.email_enabled),
      line('webhook', p.webhook_health, Boolean(p.webhook_url)));
  }

  const form = h('form', { class: 'setup-form account-form', 'aria-labelledby': 'notify-h' },
    h('h2', { id: 'notify-h', text: 'Alarm notifications' }),
    h('p', { class: 'muted small', text: 'Every alarm is in the app. Choose where else it should reach you.' }),
    h('fieldset', {}, h('legend', { text: 'Email' }), emailOn.el, email.el),
    h('fieldset', {}, h('legend', { text: 'Webhook' }), webhook.el,
      prefs.webhook_secret_set ? rotate.el : null),
    h('fieldset', {}, h('legend', { text: 'When' }), severity.el, quiet.el, quietBox, tz.el, cap.el),
    general,
    h('div', { class: 'actions' }, save, test, saved),
    shownSecret);

  let dirty = false;
  form.addEventListener('input', () => { dirty = true; });
  form.addEventListener('change', () => { dirty = true; });

  // Saves the form; true when saved (errors are shown beside their fields).
  async function saveSettings() {
    const payload = {
      email_enabled: emailOn.input.checked,
      email: email.input.value.trim() || null,
      webhook_url: webhook.input.value.trim() || null,
      rotate_webhook_secret: rotate.input.checked,
      min_severity: severity.input.value,
      quiet_start: quiet.input.checked ? quietStart.input.value : null,
      quiet_end: quiet.input.checked ? quietEnd.input.value : null,
      timezone: tz.input.value,
      max_per_hour: Number(cap.input.value) || cap.input.value,
    };
    try {
      const out = await api.request('PUT', '/api/users/me/notification-preferences', payload);
      dirty = false;
      showErrors(fields, general, null);
      rotate.input.checked = false;
      saved.textContent = `Saved ${shortDate(out.updated_at || new Date())}`;
      clear(shownSecret, out.webhook_secret
        ? h('div', { class: 'card credentials' },
          h('p', { class: 'warning', text: 'The webhook\'s signing secret, shown only now: your receiver checks X-Smartfarm-Signature with it.' }),
          secret('Signing secret', out.webhook_secret, { name: 'webhook-secret' }))
        : null);
      renderHealth(out);
      return true;
    } catch (err) {
      showErrors(fields, general, err);
      return false;
    }
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    await busy(save, saveSettings);
  });

  // The test goes out with the settings as shown: unsaved changes are saved first.
  test.addEventListener('click', async () => {
    await busy(test, async () => {
      if (dirty && !(await saveSettings())) {
        clear(results, h('li', { class: 'error', role: 'alert', text: 'Not sent: fix the settings above first.' }));
        return;
      }
      clear(results, h('li', { class: 'muted', text: 'Sending…' }));
      try {
        const out = await api.request('POST', '/api/users/me/notification-preferences/test');
        clear(results, out.channels.map((c) => h('li', { dataset: { channel: c.channel, status: c.status } },
          h('span', { class: `badge ${c.status === 'sent' ? 'ok' : (c.status === 'failed' ? 'critical' : '')}`, text: STATUS_NAMES[c.status] }),
          h('strong', { text: CHANNEL_NAMES[c.channel] }),
          h('span', { text: `${c.target ? ` to ${c.target}` : ''}: ${c.detail}` }))));
        const fresh = await api.get('/api/users/me/notification-preferences');
        renderHealth(fresh);
      } catch (err) {
        clear(results, h('li', { class: 'error', role: 'alert', text: err.status === 429 ? `Too many tests: ${err.message}` : `Could not send: ${err.message}` }));
      }
    });
  });

  renderHealth(prefs);
  clear(main,
    h('div', { class: 'setup account' },
      h('h1', { text: 'Your account' }),
      h('section', { class: 'card', 'aria-labelledby': 'me-h' },
        h('h2', { id: 'me-h', text: me.display_name || me.email }),
        h('p', { class: 'muted', text: `Signed in as ${me.email} · account since ${shortDate(me.created_at, { time: false })}` })),
      h('section', { class: 'card' }, form),
      h('section', { class: 'card', 'aria-labelledby': 'health-h' },
        h('h2', { id: 'health-h', text: 'How the channels are doing' }), health,
        h('h3', { text: 'Last test' }), results)));
  return null;
}

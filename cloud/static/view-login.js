// Sign in with email and password (POST /api/auth/login). Errors are announced (role=alert) and
// tied to the fields they concern; too many attempts say how long to wait.

import { h, clear } from './dom.js';

function waitText(seconds) {
  if (!seconds || Number.isNaN(seconds)) return 'a little while';
  if (seconds < 90) return `${Math.max(1, Math.round(seconds))} s`;
  return `${Math.round(seconds / 60)} min`;
}

export async function loginView({ api, live, main, setCrumbs, afterLogin }) {
  live.stop();
  setCrumbs({ label: 'Sign in' });
  const email = h('input', {
    id: 'email', name: 'email', type: 'email', autocomplete: 'username', required: true,
    inputmode: 'email', autocapitalize: 'none', spellcheck: 'false', 'aria-describedby': 'login-error',
  });
  const password = h('input', {
    id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: true,
    'aria-describedby': 'login-error',
  });
  const reveal = h('button', {
    type: 'button', class: 'reveal', 'aria-controls': 'password', 'aria-pressed': 'false', text: 'Show',
  });
  reveal.addEventListener('click', () => {
    const showing = password.type === 'text';
    password.type = showing ? 'password' : 'text';
    reveal.setAttribute('aria-pressed', String(!showing));
    reveal.textContent = showing ? 'Show' : 'Hide';
  });
  const error = h('p', { id: 'login-error', class: 'error', role: 'alert' });
  const submit = h('button', { type: 'submit', class: 'primary', text: 'Sign in' });
  const form = h('form', { class: 'card login', novalidate: true, 'aria-labelledby': 'login-title' },
    h('h1', { id: 'login-title', text: 'Sign in' }),
    h('p', { class: 'muted small', text: 'to see and run your farms.' }),
    h('label', { for: 'email', text: 'Email' }), email,
    h('label', { for: 'password', text: 'Password' }),
    h('div', { class: 'with-button' }, password, reveal),
    error, submit);

  function fail(message, field) {
    error.textContent = message;
    for (const input of [email, password]) {
      if (input === field || field === 'both') input.setAttribute('aria-invalid', 'true');
      else input.removeAttribute('aria-invalid');
    }
    if (field && field !== 'both') field.focus();
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.textContent = '';
    if (!email.value.trim()) return fail('Enter your email address.', email);
    if (!email.value.includes('@')) return fail('Enter an email address like name@example.com.', email);
    if (!password.value) return fail('Enter your password.', password);
    submit.disabled = true;
    submit.textContent = 'Signing in…';
    try {
      await api.login(email.value.trim(), password.value);
      afterLogin();
    } catch (err) {
      if (err.status === 401 || err.status === 422) {
        fail('Wrong email or password.', 'both');
        password.select();
        password.focus();
      } else if (err.status === 429) {
        fail(`Too many sign-in attempts. Try again in ${waitText(err.retryAfter)}.`, null);
      } else {
        fail(err.status ? `Could not sign in: ${err.message}` : 'Could not reach the server. Check the connection and try again.', null);
      }
    } finally {
      submit.disabled = false;
      submit.textContent = 'Sign in';
    }
  });
  clear(main, form);
  email.focus();
}

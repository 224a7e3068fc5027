// Sign in with email and password (POST /api/auth/login).

import { h, clear } from './dom.js';

export async function loginView({ api, live, main, setCrumbs }) {
  live.stop();
  setCrumbs({ label: 'Sign in' });
  const email = h('input', { id: 'email', name: 'email', type: 'email', autocomplete: 'username', required: true });
  const password = h('input', {
    id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: true,
  });
  const error = h('p', { class: 'error', role: 'alert', hidden: true });
  const submit = h('button', { type: 'submit', class: 'primary', text: 'Sign in' });
  const form = h('form', { class: 'card login', novalidate: true },
    h('h1', { text: 'Sign in' }),
    h('label', { for: 'email', text: 'Email' }), email,
    h('label', { for: 'password', text: 'Password' }), password,
    error, submit);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.hidden = true;
    submit.disabled = true;
    try {
      await api.login(email.value.trim(), password.value);
      location.hash = '#/';
    } catch (err) {
      error.textContent = err.status === 401 || err.status === 422
        ? 'Wrong email or password.'
        : `Could not sign in: ${err.message}`;
      error.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });
  clear(main, form);
  email.focus();
}

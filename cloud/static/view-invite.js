// Accepting an invitation (#/invite/{token}): the invitee chooses a password and is signed in
// (POST /api/auth/accept-invite). Public: the router must show it without a session.

import { h, clear } from './dom.js';

export async function inviteView({ api, live, main, setCrumbs }, token) {
  live.stop();
  setCrumbs({ label: 'Join a farm' });
  const password = h('input', { id: 'invite-password', name: 'password', type: 'password', autocomplete: 'new-password', required: true, minlength: '10' });
  const again = h('input', { id: 'invite-again', name: 'again', type: 'password', autocomplete: 'new-password', required: true });
  const error = h('p', { class: 'error', role: 'alert', hidden: true });
  const submit = h('button', { type: 'submit', class: 'primary', text: 'Join the farm' });
  const form = h('form', { class: 'card login', novalidate: true },
    h('h1', { text: 'You are invited' }),
    h('p', { class: 'muted', text: 'Choose a password for your account; you are signed in at once.' }),
    h('label', { for: 'invite-password', text: 'Password (at least 10 characters)' }), password,
    h('label', { for: 'invite-again', text: 'The same password again' }), again,
    error, submit);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.hidden = true;
    if (password.value.length < 10) {
      error.textContent = 'Use at least 10 characters.';
      error.hidden = false;
      return;
    }
    if (password.value !== again.value) {
      error.textContent = 'The two passwords differ.';
      error.hidden = false;
      return;
    }
    submit.disabled = true;
    try {
      const tokens = await api.request('POST', '/api/auth/accept-invite',
        { token, password: password.value }, { auth: false });
      await api.signInWith(tokens);
      location.hash = '#/';
    } catch (err) {
      error.textContent = err.status === 401
        ? 'This invitation link is no longer valid (used, expired or revoked): ask the farm owner for a new one.'
        : `Could not join: ${err.message}`;
      error.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });
  clear(main, form);
  password.focus();
  return null;
}

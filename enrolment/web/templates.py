"""The console's HTML templates (Jinja2, autoescaped), kept in code so they ship with it.

Plain semantic HTML: labels on every field, one column that fits a phone, no script.
"""

from __future__ import annotations

import jinja2

__all__ = ["render"]

_BASE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}{% endblock %} · Cryptopass administration</title>
<link rel="stylesheet" href="/static/console.css">
</head>
<body>
<header>
<a class="brand" href="/">Cryptopass administration</a>
{% if account %}
<nav aria-label="Main">
{% if org %}
<a href="/orgs/{{ org.name }}">Dashboard</a>
<a href="/orgs/{{ org.name }}/users">Users</a>
<a href="/orgs/{{ org.name }}/licence">Licence</a>
<a href="/orgs/{{ org.name }}/audit">Audit log</a>
{% endif %}
<a href="/account">Account</a>
<form method="post" action="/logout" class="inline">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<button type="submit">Log out</button>
</form>
</nav>
{% endif %}
</header>
<main>
{% if message %}<p class="notice" role="status">{{ message }}</p>{% endif %}
{% if error %}<p class="error" role="alert">{{ error }}</p>{% endif %}
{% block main %}{% endblock %}
</main>
</body>
</html>
"""

_LOGIN = """{% extends "base" %}{% block title %}Log in{% endblock %}
{% block main %}
<h1>Log in</h1>
<form method="post" action="/login">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<label for="email">Email</label>
<input id="email" name="email" type="email" autocomplete="username" required maxlength="254">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required
 maxlength="256">
<button type="submit">Log in</button>
</form>
{% endblock %}
"""

_ORGANISATIONS = """{% extends "base" %}{% block title %}Organisations{% endblock %}
{% block main %}
<h1>Organisations</h1>
<table>
<thead><tr><th scope="col">Name</th><th scope="col">Seats</th><th scope="col">State</th></tr>
</thead>
<tbody>
{% for found in organisations %}
<tr><td><a href="/orgs/{{ found.name }}">{{ found.name }}</a></td><td>{{ found.seats }}</td>
<td>{{ found.state.value }}</td></tr>
{% endfor %}
</tbody>
</table>
{% endblock %}
"""

_DASHBOARD = """{% extends "base" %}{% block title %}{{ org.name }}{% endblock %}
{% block main %}
<h1>{{ org.name }}</h1>
<dl class="summary">
<dt>State</dt><dd id="state" class="state-{{ org.state.value }}">{{ org.state.value }}</dd>
<dt>Seats used</dt><dd id="seats">{{ declared }} / {{ licence.seats }}</dd>
<dt>Offer</dt><dd>{{ offers[licence.offer.value] }}</dd>
</dl>
<h2>Pending seat reductions</h2>
{% if reductions %}
<ul>{% for reduction in reductions %}
<li>{{ reduction.seats }} seats from {{ reduction.effective_on.isoformat() }}</li>
{% endfor %}</ul>
{% else %}<p>None.</p>{% endif %}
{% if operator %}
<h2>Lifecycle</h2>
<form method="post" action="/orgs/{{ org.name }}/state">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<label for="new-state">New state</label>
<select id="new-state" name="state">
<option value="active">active</option><option value="suspended">suspended</option>
<option value="terminated">terminated (removes every user)</option>
</select>
<button type="submit">Change state</button>
</form>
{% endif %}
{% endblock %}
"""

_USERS = """{% extends "base" %}{% block title %}Users{% endblock %}
{% block main %}
<h1>Users of {{ org.name }}</h1>
<p>{{ users|length }} shown · seats used {{ declared }} / {{ seats }}</p>
<form method="get" action="/orgs/{{ org.name }}/users" role="search">
<label for="q">Search by number</label>
<input id="q" name="q" type="search" value="{{ search }}" maxlength="64">
<button type="submit">Search</button>
</form>
<h2>Add a user</h2>
<form method="post" action="/orgs/{{ org.name }}/users">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<label for="phone">Phone number (international, e.g. +33 6 12 34 56 78)</label>
<input id="phone" name="phone" type="tel" autocomplete="off" required maxlength="64">
<button type="submit">Add</button>
</form>
<table id="users">
<thead><tr><th scope="col">Number</th><th scope="col">Status</th><th scope="col">Devices</th>
<th scope="col">Enrolled</th><th scope="col">Last seen</th><th scope="col">Actions</th></tr>
</thead>
<tbody>
{% for user in users %}
<tr data-phone="{{ user.phone }}">
<td><a href="/orgs/{{ org.name }}/users/{{ user.phone|urlencode }}">{{ user.phone_national }}</a>
</td>
<td class="status">{{ user.status }}</td><td>{{ user.devices|length }}</td>
<td>{{ user.enrolled_on or "" }}</td><td>{{ user.last_seen_on or "" }}</td>
<td>
<form method="post" action="/orgs/{{ org.name }}/users/{{ user.phone|urlencode }}/delete"
 class="inline">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<button type="submit" aria-label="Delete {{ user.phone_national }}">Delete</button>
</form>
</td>
</tr>
{% endfor %}
</tbody>
</table>
<h2>Import and export</h2>
<p><a href="/orgs/{{ org.name }}/users.csv">Export as CSV</a></p>
<form method="post" action="/orgs/{{ org.name }}/users/import">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<label for="csv">Numbers to declare, one per line (CSV, first column)</label>
<textarea id="csv" name="csv" rows="5" maxlength="1000000"></textarea>
<button type="submit">Import</button>
</form>
{% endblock %}
"""

_USER = """{% extends "base" %}{% block title %}{{ user.phone_national }}{% endblock %}
{% block main %}
<h1>{{ user.phone_national }}</h1>
<dl class="summary">
<dt>Number</dt><dd>{{ user.phone }}</dd>
<dt>Status</dt><dd>{{ user.status }}</dd>
<dt>Declared</dt><dd>{{ user.declared_on }}</dd>
<dt>Enrolled</dt><dd>{{ user.enrolled_on or "not yet" }}</dd>
</dl>
<h2>Devices</h2>
{% if user.devices %}<ul>{% for device in user.devices %}
<li>Device {{ device.device_id }}, registered {{ device.registered_on }}
<form method="post" class="inline" action="/orgs/{{ org.name }}/users/
{{- user.phone|urlencode }}/devices/{{ device.device_id }}/revoke">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<button type="submit" aria-label="Revoke device {{ device.device_id }}">Revoke</button>
</form>
</li>
{% endfor %}</ul>{% else %}<p>No device yet.</p>{% endif %}
<h2>Replace the number</h2>
<form method="post" action="/orgs/{{ org.name }}/users/{{ user.phone|urlencode }}/replace">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<label for="new-phone">New phone number</label>
<input id="new-phone" name="phone" type="tel" required maxlength="64">
<button type="submit">Replace</button>
</form>
<h2>Personal data</h2>
<p><a href="/api/v1/orgs/{{ org.name }}/users/{{ user.phone|urlencode }}/personal-data">
Export as JSON</a> (the read is recorded in the audit log)</p>
<form method="post" action="/orgs/{{ org.name }}/users/{{ user.phone|urlencode }}/erase">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<button type="submit">Erase this user</button>
</form>
{% endblock %}
"""

_LICENCE = """{% extends "base" %}{% block title %}Licence{% endblock %}
{% block main %}
<h1>Licence of {{ org.name }}</h1>
<dl class="summary">
<dt>Seats</dt><dd>{{ licence.seats }} ({{ declared }} used)</dd>
<dt>Offer</dt><dd>{{ offers[licence.offer.value] }}</dd>
<dt>Contract start</dt><dd>{{ licence.period_start.isoformat() }}</dd>
</dl>
<h2>Pending reductions</h2>
{% if reductions %}<ul>{% for reduction in reductions %}
<li>{{ reduction.seats }} seats from {{ reduction.effective_on.isoformat() }}</li>
{% endfor %}</ul>{% else %}<p>None.</p>{% endif %}
<h2>Reduce the number of seats</h2>
<form method="post" action="/orgs/{{ org.name }}/licence">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<label for="seats">New number of seats</label>
<input id="seats" name="seats" type="number" min="0" max="{{ licence.seats - 1 }}" required>
<button type="submit">Request the reduction</button>
</form>
{% endblock %}
"""

_AUDIT = """{% extends "base" %}{% block title %}Audit log{% endblock %}
{% block main %}
<h1>Audit log of {{ org.name }}</h1>
<form method="get" action="/orgs/{{ org.name }}/audit" role="search">
<label for="action">Action</label>
<input id="action" name="action" value="{{ action }}" maxlength="64">
<label for="subject">Subject (number or pseudonym)</label>
<input id="subject" name="subject" value="{{ subject }}" maxlength="64">
<button type="submit">Filter</button>
</form>
<table>
<thead><tr><th scope="col">When (UTC)</th><th scope="col">Who</th><th scope="col">What</th>
<th scope="col">Subject</th><th scope="col">From</th></tr></thead>
<tbody>
{% for entry in entries %}
<tr><td>{{ entry.at }}</td><td>{{ entry.actor }}</td><td>{{ entry.action }}</td>
<td>{{ entry.subject }}</td><td>{{ entry.address }}</td></tr>
{% endfor %}
</tbody>
</table>
{% endblock %}
"""

_ACCOUNT = """{% extends "base" %}{% block title %}Account{% endblock %}
{% block main %}
<h1>Account</h1>
<p>Logged in as {{ account.email }} ({{ account.role.value.replace("_", " ") }}).</p>
{% if account.must_change_password %}
<p class="notice" role="status">You logged in with a one-time password: it works once. Choose
your own password now; until then the console and the API refuse everything else.</p>
{% endif %}
<h2>Change the password</h2>
<form method="post" action="/account/password">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<label for="current">Current password</label>
<input id="current" name="current" type="password" autocomplete="current-password" required>
<label for="new">New password (at least {{ min_password }} characters)</label>
<input id="new" name="new" type="password" autocomplete="new-password" required
 minlength="{{ min_password }}" maxlength="256">
<button type="submit">Change</button>
</form>
{% endblock %}
"""

CSS = """
body{font:16px/1.5 system-ui,sans-serif;margin:0;color:#111;background:#fafafa}
header{background:#123;color:#fff;padding:.5rem 1rem;display:flex;flex-wrap:wrap;gap:1rem;
align-items:center}
header a{color:#fff}.brand{font-weight:bold;text-decoration:none}
nav{display:flex;flex-wrap:wrap;gap:.75rem;align-items:center}
main{max-width:60rem;margin:0 auto;padding:1rem}
label{display:block;margin-top:.5rem}input,select,textarea{font:inherit;max-width:100%}
button{font:inherit;margin:.5rem 0;padding:.25rem .75rem}
form.inline{display:inline}
table{border-collapse:collapse;width:100%;display:block;overflow-x:auto}
th,td{border-bottom:1px solid #ccc;padding:.25rem .5rem;text-align:left}
.notice{background:#e6f4ea;padding:.5rem}.error{background:#fde7e9;padding:.5rem}
dl.summary{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem}
dd{margin:0}
"""

_environment = jinja2.Environment(
    loader=jinja2.DictLoader({
        "base": _BASE, "login": _LOGIN, "organisations": _ORGANISATIONS,
        "dashboard": _DASHBOARD, "users": _USERS, "user": _USER, "licence": _LICENCE,
        "audit": _AUDIT, "account": _ACCOUNT}),
    autoescape=True, undefined=jinja2.StrictUndefined)


def render(template: str, **values: object) -> str:
    """The page ``template`` filled with ``values`` (every value is HTML-escaped)."""
    values.setdefault("message", None)
    values.setdefault("error", None)
    values.setdefault("org", None)
    values.setdefault("account", None)
    values.setdefault("csrf", "")
    return _environment.get_template(template).render(**values)

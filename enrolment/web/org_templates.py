"""The console's pages about organisations (Jinja2 sources; ``templates`` renders them).

Tables carry ``class="cards"`` and a ``data-label`` on every cell: on a phone each row is a
card (``console_css``). Destructive actions are links to a confirmation page, not buttons.
"""

from __future__ import annotations

__all__ = ["ORGANISATION_TEMPLATES"]

_BAR = """{% macro bar(part, whole, label, kind="used") -%}
<div class="meter"><svg viewBox="0 0 100 10" preserveAspectRatio="none" role="img"
 aria-label="{{ label }}" focusable="false"><rect class="track" width="100" height="10"/>
<rect class="{{ kind }}" width="{{ percent(part, whole) }}" height="10"/></svg></div>
{%- endmacro %}"""

_ORGANISATIONS = """{% extends "base" %}{% block title %}Organisations{% endblock %}
{% block main %}
<h1>Organisations</h1>
<table class="cards">
<thead><tr><th scope="col">Name</th><th scope="col">Seats</th><th scope="col">State</th></tr>
</thead>
<tbody>
{% for found in organisations %}
<tr><td data-label="Name"><a href="/orgs/{{ found.name }}">{{ found.name }}</a></td>
<td data-label="Seats">{{ found.seats }}</td>
<td data-label="State">{{ found.state.value }}</td></tr>
{% endfor %}
</tbody>
</table>
{% endblock %}
"""

_AUDIT_ROWS = """{% macro audit_rows(entries, labels) -%}
<table class="cards">
<thead><tr><th scope="col">When</th><th scope="col">Who</th><th scope="col">What</th>
<th scope="col">Subject</th><th scope="col">From</th></tr></thead>
<tbody>
{% for entry in entries %}
<tr><td data-label="When">{{ entry.at|moment }}</td><td data-label="Who">{{ entry.actor }}</td>
<td data-label="What">{{ labels.get(entry.action, entry.action) }}
<span class="hint">({{ entry.action }})</span></td>
<td data-label="Subject">{{ entry.subject }}</td><td data-label="From">{{ entry.address }}</td>
</tr>
{% endfor %}
</tbody>
</table>
{%- endmacro %}"""

_DASHBOARD = """{% extends "base" %}{% import "bar" as meters %}{% import "audit_rows" as log %}
{% block title %}{{ org.name }}{% endblock %}
{% block main %}
<h1>{{ org.name }}</h1>
<dl class="summary">
<dt>State</dt><dd id="state" class="state-{{ org.state.value }}">{{ org.state.value }}</dd>
<dt>Offer</dt><dd>{{ offers[licence.offer.value] }}</dd>
<dt>Contract start</dt><dd>{{ licence.period_start|day }}</dd>
</dl>
<h2>Seats</h2>
<p>Seats used: <span id="seats">{{ declared }} / {{ licence.seats }}</span></p>
{{ meters.bar(declared, licence.seats, declared ~ " of " ~ licence.seats ~ " seats used",
              "full" if declared >= licence.seats else "used") }}
<h2>Enrolment</h2>
<p><span id="enrolled">{{ enrolled }} of {{ declared }}</span> declared users have enrolled a
device.</p>
{{ meters.bar(enrolled, declared, enrolled ~ " of " ~ declared ~ " declared users enrolled",
              "done") }}
<h2>Pending seat reductions</h2>
{% if reductions %}
<ul id="reductions">{% for reduction in reductions %}
<li>{{ reduction.seats }} seats from {{ reduction.effective_on|day }}</li>
{% endfor %}</ul>
{% else %}<p>None.</p>{% endif %}
<h2>Latest activity</h2>
{% if entries %}{{ log.audit_rows(entries, labels) }}
<p><a href="/orgs/{{ org.name }}/audit">The whole audit log</a></p>
{% else %}<p>Nothing yet.</p>{% endif %}
{% if operator %}
<h2>Lifecycle (operators)</h2>
<form method="post" action="/orgs/{{ org.name }}/state">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<label for="new-state">New state</label>
<select id="new-state" name="state">
{% for value, text in states %}<option value="{{ value }}"
{%- if value == org.state.value %} selected{% endif %}>{{ text }}</option>{% endfor %}
</select>
<button type="submit">Change state</button>
</form>
<h2>Cross-organisation policy (operators)</h2>
<form method="post" action="/orgs/{{ org.name }}/policy">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<fieldset><legend>May its users reach users of other organisations?</legend>
<label><input type="radio" name="cross_organisation" value="allowed"
{%- if cross_organisation %} checked{% endif %}> Allowed</label>
<label><input type="radio" name="cross_organisation" value="refused"
{%- if not cross_organisation %} checked{% endif %}> Refused</label>
</fieldset>
<button type="submit">Set the policy</button>
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
<input id="phone" name="phone" type="tel" autocomplete="off" required maxlength="64"
 value="{{ entered.get('phone', '') }}">
<button type="submit">Add</button>
</form>
<h2>Users</h2>
<table id="users" class="cards">
<thead><tr><th scope="col">Number</th><th scope="col">Status</th><th scope="col">Devices</th>
<th scope="col">Enrolled</th><th scope="col">Last seen</th><th scope="col">Actions</th></tr>
</thead>
<tbody>
{% for user in users %}
<tr data-phone="{{ user.phone }}">
<td data-label="Number"><a href="/orgs/{{ org.name }}/users/{{ user.phone|urlencode }}">
{{- user.phone_national }}</a></td>
<td data-label="Status" class="status">{{ user.status }}</td>
<td data-label="Devices">{{ user.devices|length }}</td>
<td data-label="Enrolled">{{ user.enrolled_on|day }}</td>
<td data-label="Last seen">{{ user.last_seen_on|day if user.last_seen_on else "never" }}</td>
<td data-label="Actions"><a class="button danger"
 href="/orgs/{{ org.name }}/users/{{ user.phone|urlencode }}/delete"
 aria-label="Delete {{ user.phone_national }}">Delete</a></td>
</tr>
{% endfor %}
</tbody>
</table>
<h2>Import and export</h2>
<p><a href="/orgs/{{ org.name }}/users.csv">Export as CSV</a></p>
<form method="post" action="/orgs/{{ org.name }}/users/import">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<label for="csv">Numbers to declare, one per line (CSV, first column)</label>
<textarea id="csv" name="csv" rows="5" maxlength="1000000">{{ entered.get('csv', '') }}
</textarea>
<button type="submit">Import</button>
</form>
{% endblock %}
"""

_USER = """{% extends "base" %}{% block title %}{{ user.phone_national }}{% endblock %}
{% block main %}
{% set here_user = "/orgs/" ~ org.name ~ "/users/" ~ user.phone|urlencode %}
<h1>{{ user.phone_national }}</h1>
<dl class="summary">
<dt>Number</dt><dd>{{ user.phone }}</dd>
<dt>Status</dt><dd>{{ user.status }}</dd>
<dt>Declared</dt><dd>{{ user.declared_on|day }}</dd>
<dt>Enrolled</dt><dd>{{ user.enrolled_on|day if user.enrolled_on else "not yet" }}</dd>
<dt>Last seen</dt><dd>{{ user.last_seen_on|day if user.last_seen_on else "never" }}</dd>
</dl>
<h2>Devices</h2>
{% if user.devices %}
<table id="devices" class="cards">
<thead><tr><th scope="col">Device</th><th scope="col">Registered</th>
<th scope="col">Last seen</th><th scope="col">Action</th></tr></thead>
<tbody>
{% for device in user.devices %}
<tr><td data-label="Device">Device {{ device.device_id }}</td>
<td data-label="Registered">{{ device.registered_on|day }}</td>
<td data-label="Last seen">
{{- device.last_seen_on|day if device.last_seen_on else "never" }}</td>
<td data-label="Action"><a class="button danger"
 href="{{ here_user }}/devices/{{ device.device_id }}/revoke"
 aria-label="Revoke device {{ device.device_id }}">Revoke</a></td></tr>
{% endfor %}
</tbody>
</table>
{% else %}<p>No device yet.</p>{% endif %}
<h2>Replace the number</h2>
<form method="post" action="{{ here_user }}/replace">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<label for="new-phone">New phone number</label>
<input id="new-phone" name="phone" type="tel" required maxlength="64"
 value="{{ entered.get('phone', '') }}">
<button type="submit">Replace</button>
</form>
<h2>Personal data</h2>
<p><a href="/api/v1/orgs/{{ org.name }}/users/{{ user.phone|urlencode }}/personal-data">
Export as JSON</a> (the read is recorded in the audit log)</p>
<p><a class="button danger" href="{{ here_user }}/erase">Erase this user</a></p>
{% endblock %}
"""

_LICENCE = """{% extends "base" %}{% import "bar" as meters %}
{% block title %}Licence{% endblock %}
{% block main %}
<h1>Licence of {{ org.name }}</h1>
<dl class="summary">
<dt>Seats</dt><dd>{{ licence.seats }} ({{ declared }} used)</dd>
<dt>Offer</dt><dd>{{ offers[licence.offer.value] }}</dd>
<dt>Contract start</dt><dd>{{ licence.period_start|day }}</dd>
</dl>
{{ meters.bar(declared, licence.seats, declared ~ " of " ~ licence.seats ~ " seats used") }}
<h2>Pending reductions</h2>
{% if reductions %}<ul>{% for reduction in reductions %}
<li>{{ reduction.seats }} seats from {{ reduction.effective_on|day }}</li>
{% endfor %}</ul>{% else %}<p>None.</p>{% endif %}
<h2>Reduce the number of seats</h2>
<form method="post" action="/orgs/{{ org.name }}/licence">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<input type="hidden" name="change" value="reduce">
<label for="seats">New number of seats</label>
<input id="seats" name="seats" inputmode="numeric" required maxlength="9"
 value="{{ entered.get('seats', '') if entered.get('change') == 'reduce' else '' }}">
<button type="submit">Request the reduction</button>
</form>
{% if operator %}
<h2>Add seats (operators)</h2>
<form method="post" action="/orgs/{{ org.name }}/licence">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<input type="hidden" name="change" value="add">
<label for="added">Seats to add (at once)</label>
<input id="added" name="seats" inputmode="numeric" required maxlength="9"
 value="{{ entered.get('seats', '') if entered.get('change') == 'add' else '' }}">
<button type="submit">Add seats</button>
</form>
<h2>Offer and contract start (operators)</h2>
<form method="post" action="/orgs/{{ org.name }}/licence">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<input type="hidden" name="change" value="terms">
{% set chosen = entered.get('offer', licence.offer.value) %}
<label for="offer">Offer</label>
<select id="offer" name="offer">
{% for value, text in offers.items() %}<option value="{{ value }}"
{%- if value == chosen %} selected{% endif %}>{{ text }}</option>{% endfor %}
</select>
<label for="contract-start">Contract start (first day of the contract)</label>
<input id="contract-start" name="contract_start" type="date" required
 value="{{ entered.get('contract_start', licence.period_start.isoformat()) }}">
<button type="submit">Set the terms</button>
</form>
{% endif %}
{% endblock %}
"""

_AUDIT = """{% extends "base" %}{% import "audit_rows" as log %}
{% block title %}Audit log{% endblock %}
{% block main %}
<h1>Audit log of {{ org.name }}</h1>
<form method="get" action="/orgs/{{ org.name }}/audit" role="search">
<label for="action">Action</label>
<select id="action" name="action">
<option value="">Any action</option>
{% for code, text in actions %}<option value="{{ code }}"
{%- if code == action %} selected{% endif %}>{{ text }} ({{ code }})</option>{% endfor %}
</select>
<label for="subject">Subject (number or pseudonym)</label>
<input id="subject" name="subject" value="{{ subject }}" maxlength="64">
<button type="submit">Filter</button>
</form>
{% if entries %}{{ log.audit_rows(entries, labels) }}{% else %}<p>No entry.</p>{% endif %}
{% endblock %}
"""

ORGANISATION_TEMPLATES = {
    "bar": _BAR, "audit_rows": _AUDIT_ROWS, "organisations": _ORGANISATIONS,
    "dashboard": _DASHBOARD, "users": _USERS, "user": _USER, "licence": _LICENCE,
    "audit": _AUDIT}
"""Template name -> source."""

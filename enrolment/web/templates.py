"""The console's HTML templates (Jinja2, autoescaped), kept in code so they ship with it.

Plain semantic HTML: a label on every field, the navigation on every page, tables that become
cards on a phone (``console_css``), no script. The pages of one organisation are in
``org_templates``.
"""

from __future__ import annotations

import datetime

import jinja2
from markupsafe import Markup

from enrolment.web.console_css import CSS
from enrolment.web.console_text import day_text, moment_text
from enrolment.web.org_templates import ORGANISATION_TEMPLATES

__all__ = ["CSS", "render"]

_BASE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}{% endblock %} · Cryptopass administration</title>
<link rel="stylesheet" href="/static/console.css">
</head>
<body>
{% macro link(href, text) -%}
<a href="{{ href }}"{% if here == href %} aria-current="page"{% endif %}>{{ text }}</a>
{%- endmacro %}
<header>
<a class="brand" href="/">Cryptopass administration</a>
{% if account %}
<nav aria-label="Main">
<ul>
{% if operator %}<li>{{ link("/", "Organisations") }}</li>{% endif %}
{% if nav_org %}{% set base = "/orgs/" ~ nav_org %}
<li>{{ link(base, "Dashboard") }}</li>
<li>{{ link(base ~ "/users", "Users") }}</li>
<li>{{ link(base ~ "/licence", "Licence") }}</li>
<li>{{ link(base ~ "/audit", "Audit log") }}</li>
{% endif %}
<li>{{ link("/account", "Account") }}</li>
<li><form method="post" action="/logout" class="inline">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<button type="submit">Log out</button>
</form></li>
</ul>
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

_ERROR = """{% extends "base" %}{% block title %}Refused{% endblock %}
{% block main %}
<h1>{{ heading }}</h1>
<p><a href="/">Back to the start</a></p>
{% endblock %}
"""

_LOGIN = """{% extends "base" %}{% block title %}Log in{% endblock %}
{% block main %}
<h1>Log in</h1>
<form method="post" action="/login">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<label for="email">Email</label>
<input id="email" name="email" type="email" autocomplete="username" required maxlength="254"
 value="{{ email }}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required
 maxlength="256">
<button type="submit">Log in</button>
</form>
{% endblock %}
"""

_CONFIRM = """{% extends "base" %}{% block title %}{{ title }}{% endblock %}
{% block main %}
<h1>{{ title }}</h1>
<div class="confirm">
{% for line in consequences %}<p>{{ line }}</p>{% endfor %}
<form method="post" action="{{ action }}">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
<input type="hidden" name="confirm" value="yes">
{% for name, value in fields %}<input type="hidden" name="{{ name }}" value="{{ value }}">
{% endfor %}
<button type="submit" class="danger">{{ button }}</button>
<a class="button" href="{{ back }}">Cancel</a>
</form>
</div>
{% endblock %}
"""

_ACCOUNT = """{% extends "base" %}{% block title %}Account{% endblock %}
{% block main %}
<h1>Account</h1>
<p>Logged in as {{ account.email }} ({{ account.role.value.replace("_", " ") }}).</p>
{% if account.must_change_password %}
<p class="notice">You logged in with a one-time password: it works once. Choose
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
<p class="hint">Times in the console are shown in the relay's time zone, named after each
time.</p>
{% endblock %}
"""


def _moment(ms: int) -> Markup:
    machine, readable = moment_text(ms)
    return Markup('<time datetime="{}">{}</time>').format(machine, readable)


def _day(day: str | datetime.date | None) -> Markup:
    if day is None:
        return Markup("")
    text = day if isinstance(day, str) else day.isoformat()
    return Markup('<time datetime="{}">{}</time>').format(text, day_text(day))


def _percent(part: int, whole: int) -> str:
    """A bar's filled share of 100, never past the end."""
    return "0" if whole <= 0 else f"{min(100.0, 100.0 * part / whole):.1f}"


_environment = jinja2.Environment(
    loader=jinja2.DictLoader({
        "base": _BASE, "login": _LOGIN, "account": _ACCOUNT, "error": _ERROR,
        "confirm": _CONFIRM, **ORGANISATION_TEMPLATES}),
    autoescape=True, undefined=jinja2.StrictUndefined)
_environment.filters["moment"] = _moment
_environment.filters["day"] = _day
_environment.globals["percent"] = _percent


def render(template: str, **values: object) -> str:
    """The page ``template`` filled with ``values`` (every value is HTML-escaped)."""
    for name in ("message", "error", "org", "account", "nav_org", "here"):
        values.setdefault(name, None)
    values.setdefault("csrf", "")
    values.setdefault("operator", False)
    values.setdefault("entered", {})
    values.setdefault("email", "")
    return _environment.get_template(template).render(**values)

"""Organisation administration over HTTPS: the JSON admin API and the console pages.

``service`` holds the rules (authorisation, audit, seat and licence rules) and knows no HTTP;
``api`` and ``console`` translate HTTP to it; ``relay.admin_http`` serves them in the relay.
"""

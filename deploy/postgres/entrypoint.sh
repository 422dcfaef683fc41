#!/bin/sh
# Starts PostgreSQL in the foreground, initialising $PGDATA on the first start like the stock
# `postgres` image does: a superuser POSTGRES_USER whose password is read from
# POSTGRES_PASSWORD_FILE (a compose secret), a database POSTGRES_DB, trust on the container's
# own socket (pg_isready, psql in `exec`) and password (SCRAM) authentication over the network.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
user="${POSTGRES_USER:-postgres}"
db="${POSTGRES_DB:-$user}"
bin="$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d | sort | tail -n 1)"
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

chown postgres:postgres "$PGDATA"
chmod 0700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD_FILE:-}" ] || [ ! -s "$POSTGRES_PASSWORD_FILE" ]; then
        echo "error: POSTGRES_PASSWORD_FILE must name a non-empty file" >&2
        exit 1
    fi
    pwfile="$(mktemp)"
    head -n 1 "$POSTGRES_PASSWORD_FILE" | tr -d '\r\n' >"$pwfile"
    chown postgres "$pwfile"
    as_postgres "$bin/initdb" -D "$PGDATA" -U "$user" --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    # The database, created over the socket before any network client can connect.
    as_postgres "$bin/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    if [ "$db" != postgres ]; then
        as_postgres "$bin/createdb" -U "$user" -O "$user" "$db"
    fi
    as_postgres "$bin/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups "$bin/postgres" -D "$PGDATA"

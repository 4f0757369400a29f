#!/bin/sh
# Runs once, when the PostgreSQL volume is empty (the postgres image runs every file in
# /docker-entrypoint-initdb.d/ as the superuser, POSTGRES_USER). It makes:
#
# 1. the OWNER role (DB_OWNER, default accord_owner): owns the database (DB_NAME, default accord)
#    and so, on PostgreSQL 15 and later, its `public` schema; `accord ledger init` runs
#    as this role, creates the tables and the append-only guards, and grants the app role;
# 2. the APPLICATION role (DB_APP, default accord_app): only LOGIN. The processor,
#    `accord serve` and `accord consent` run as it, and refuse to run as a role that could
#    change history (the owner, a superuser, CREATEROLE, UPDATE/DELETE/TRUNCATE);
# 3. nothing else: PUBLIC loses CREATE on the schema, so only the owner creates tables.
#
# Passwords come from OWNER_PASSWORD and APP_PASSWORD (compose/.env); psql quotes them as
# literals (:'var'), so no character can break out of the statement.
set -eu

: "${OWNER_PASSWORD:?set OWNER_PASSWORD (compose/.env)}"
: "${APP_PASSWORD:?set APP_PASSWORD (compose/.env)}"
owner="${DB_OWNER:-accord_owner}"
app="${DB_APP:-accord_app}"
db="${DB_NAME:-accord}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v owner="$owner" -v app="$app" -v db="$db" \
    -v owner_password="$OWNER_PASSWORD" -v app_password="$APP_PASSWORD" <<'SQL'
CREATE ROLE :"owner" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'owner_password';
CREATE ROLE :"app" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOINHERIT PASSWORD :'app_password';
CREATE DATABASE :"db" OWNER :"owner";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO :"owner";
GRANT CONNECT ON DATABASE :"db" TO :"app";
SQL

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$db" \
    -v owner="$owner" -v app="$app" <<'SQL'
ALTER SCHEMA public OWNER TO :"owner";
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"app";
SQL

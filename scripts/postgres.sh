#!/usr/bin/env bash
# A local Postgres for development and CI: installs it (apt-get) when
# missing, starts the newest cluster, allows password-less (trust) access
# for user `postgres` on 127.0.0.1, and creates the `test` database.
# Idempotent: on a machine where it already runs, it only checks.
#
#   bash scripts/postgres.sh
#   export DATABASE_URL=postgres://postgres@127.0.0.1:5432/test
#
# For development machines only: trust auth means no password at all.
set -euo pipefail

PORT="${PGPORT:-5432}"
log() { printf 'postgres.sh: %s\n' "$*"; }

ready() { pg_isready -h 127.0.0.1 -p "$PORT" >/dev/null 2>&1; }

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    log "installing postgresql"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-contrib >/dev/null
fi

if ! ready; then
    version="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)"
    if [ -z "$version" ]; then
        version="$(ls /usr/lib/postgresql | sort -V | tail -1)"
        log "creating cluster $version/main"
        pg_createcluster "$version" main --port "$PORT" >/dev/null
    fi
    hba="/etc/postgresql/$version/main/pg_hba.conf"
    if ! grep -Eq '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
        log "trusting local TCP connections in $hba (development only)"
        tmp="$(mktemp)"
        {
            echo "local all all trust"
            echo "host all all 127.0.0.1/32 trust"
            echo "host all all ::1/128 trust"
            grep -Ev '^(local|host)[[:space:]]' "$hba" || true
        } >"$tmp"
        cat "$tmp" >"$hba"
        rm -f "$tmp"
    fi
    log "starting cluster $version/main"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 100); do
        ready && break
        sleep 0.1
    done
fi

if ! ready; then
    log "Postgres is not accepting connections on 127.0.0.1:$PORT"
    exit 1
fi

if ! psql -h 127.0.0.1 -p "$PORT" -U postgres -Atc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
    log "creating database test"
    psql -h 127.0.0.1 -p "$PORT" -U postgres -qc "CREATE DATABASE test"
fi
log "ready: postgres://postgres@127.0.0.1:$PORT/test"

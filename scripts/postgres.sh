#!/usr/bin/env bash
# A local Postgres for development and CI: installs it (apt-get) when
# missing, starts the newest cluster and creates the `test` database.
# Idempotent: on a machine where it already runs, it only checks.
#
#   bash scripts/postgres.sh [--trust-local]
#   export DATABASE_URL=postgres://postgres@127.0.0.1:5432/test
#
# The tests connect as user `postgres` without a password. Allowing that
# means rewriting the cluster's pg_hba.conf to trust local connections,
# which this script does only when asked (`--trust-local`) or under CI
# (`CI` set, as `.ci/run` runs); it keeps the old file as
# pg_hba.conf.flashsale-backup. Otherwise it leaves pg_hba.conf alone and
# says what to do. Trust means no password at all: development only.
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
trust_local=0
case "${CI:-}" in "" | 0 | false) ;; *) trust_local=1 ;; esac
for arg in "$@"; do
    case "$arg" in
        --trust-local) trust_local=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "postgres.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done

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
    if grep -Eq '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
        :
    elif [ "$trust_local" = 0 ]; then
        log "leaving $hba as it is: the tests need password-less access for user postgres"
        log "on 127.0.0.1; rerun with --trust-local to allow it, or put a password in DATABASE_URL"
    else
        log "trusting local TCP connections in $hba (development only; old file kept as $hba.flashsale-backup)"
        cp -p "$hba" "$hba.flashsale-backup"
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

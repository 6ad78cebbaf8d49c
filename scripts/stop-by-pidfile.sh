# Sourced by scripts/redis.sh and scripts/redis-cluster.sh.
# stop_by_pidfile FILE: stops the process whose pid FILE holds, waiting at
# most 5 s for it to exit, and removes FILE; returns 1 if there is no FILE.
stop_by_pidfile() {
    [ -f "$1" ] || return 1
    local pid
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    rm -f "$1"
}

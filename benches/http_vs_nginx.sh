#!/usr/bin/env bash
# The H workloads (the project's WORKLOADS.md, "HTTP workloads"): the example
# server (examples/prefork_http.rs) against nginx + lua-nginx-module
# (benches/nginx-h.conf), both with 4 workers on loopback, alternated in one
# window: wrk -t2 -c64 and -c256 on /hit, /limit?key=me and GET /kv/k1
# after one PUT (skipped only if that PUT fails). Prints requests/s, p99 latency
# and the ratio to nginx. Not run by CI.
#
#   benches/http_vs_nginx.sh               # -d10s, one round
#   DUR=3s ROUNDS=2 benches/http_vs_nginx.sh
#   SHMZONE_ARGS="--reuseport" benches/http_vs_nginx.sh
#   BIN=/tmp/prefork_http-old benches/http_vs_nginx.sh   # another build
#   NICE=-10 benches/http_vs_nginx.sh      # shielded from other sessions
#   ONLY=limit CONNS=64 benches/http_vs_nginx.sh   # rows whose path matches
#   VERBOSE=1 ROUNDS=5 benches/http_vs_nginx.sh    # each round on stderr too
#
# NICE runs the whole comparison (nginx, ours and wrk alike) in a new
# session whose autogroup gets that nice value: on a machine shared with
# builds in other sessions (Linux autogroups: a plain `nice` does not reach
# across sessions), they then take little of the 2 cores meanwhile.
#
# The "spread" columns are the most and fewest connections one worker held
# during the run (from ss, 1 s in, last round).
#
# ROUNDS > 1 alternates nginx and ours that many times per row and prints
# medians; on a shared machine compare the ratios, not the absolute figures.
#
# Installs what is missing (Debian): nginx-light, libnginx-mod-http-lua, wrk.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${NICE:-}" ] && [ -z "${HTTP_VS_NGINX_SHIELDED:-}" ]; then
    export HTTP_VS_NGINX_SHIELDED=1
    # setsid -w: a new session (and autogroup), waited for, so that a
    # caller's flock holds until the end.
    exec setsid -w sh -c 'echo "$1" > /proc/self/autogroup && shift && exec nice -n "$0" "$@"' \
        "$NICE" "$NICE" "$0" "$@"
fi

DUR=${DUR:-10s}
ROUNDS=${ROUNDS:-1}
CONNS=${CONNS:-"64 256"}
NGINX_PORT=18090
OURS_PORT=${OURS_PORT:-18091}
SHMZONE_ARGS=${SHMZONE_ARGS:-}

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null \
    || [ ! -e /usr/lib/nginx/modules/ngx_http_lua_module.so ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y nginx-light libnginx-mod-http-lua wrk
fi

if [ -z "${BIN:-}" ]; then
    cargo build --release --example prefork_http >&2
    BIN=target/release/examples/prefork_http
fi

tmp=$(mktemp -d)
mkdir -p "$tmp/logs"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

nginx -p "$tmp" -c "$PWD/benches/nginx-h.conf" 2>"$tmp/nginx.err" &
pids+=($!)
NGINX_MASTER=$!
# shellcheck disable=SC2086
"$BIN" --workers 4 --listen "127.0.0.1:$OURS_PORT" --log warn $SHMZONE_ARGS >"$tmp/ours.out" 2>"$tmp/ours.err" &
pids+=($!)
OURS_MASTER=$!

wait_up() {
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$1/hit" && return 0
        sleep 0.1
    done
    echo "server on port $1 did not start" >&2
    cat "$tmp"/*.err >&2
    exit 1
}
wait_up $NGINX_PORT
wait_up "$OURS_PORT"

paths=(/hit "/limit?key=me")
code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data-binary 'value-of-k1' "http://127.0.0.1:$OURS_PORT/kv/k1")
if [ "${code:0:1}" = 2 ]; then
    curl -s -o /dev/null -X PUT --data-binary 'value-of-k1' "http://127.0.0.1:$NGINX_PORT/kv/k1"
    paths+=(/kv/k1)
else
    echo "(PUT /kv/k1 on the example server answered $code: /kv skipped)" >&2
fi

if [ -n "${ONLY:-}" ]; then
    kept=()
    for p in "${paths[@]}"; do
        if [[ $p =~ $ONLY ]]; then kept+=("$p"); fi
    done
    paths=("${kept[@]}")
fi

# wrk's latency "99%  1.23ms" in milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000;
        printf "%.2f", n }'
}

# CPU time (clock ticks) used so far by the workers of master $1.
cpu_ticks() {
    local t=0 p
    for p in $(pgrep -P "$1"); do
        t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo $t
}

# Most/fewest established connections per worker on port $1 ("16/16").
spread() {
    ss -tnpH state established "( sport = :$1 )" | grep -o 'pid=[0-9]*' | sort | uniq -c \
        | awk -v w=4 '{ n++; if ($1 > mx) mx = $1; if (mn == "" || $1 < mn) mn = $1 }
            END { if (n < w) mn = 0; printf "%d/%d", mx, mn }'
}

# run MASTER PORT PATH CONNS -> "rps p99ms cpu-us-per-request spread"
run() {
    local out rps p99 reqs c0 c1 wp sp
    c0=$(cpu_ticks "$1")
    wrk -t2 -c"$4" -d"$DUR" --latency "http://127.0.0.1:$2$3" >"$tmp/wrk.out" &
    wp=$!
    sleep 1
    sp=$(spread "$2")
    wait $wp
    out=$(cat "$tmp/wrk.out")
    c1=$(cpu_ticks "$1")
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    reqs=$(awk '/requests in/ { print $1 }' <<<"$out")
    p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
    echo "$rps $(to_ms "$p99") $(awk -v c=$((c1 - c0)) -v n="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", c * 1e6 / hz / n }') $sp"
}

median() { tr ' ' '\n' | grep . | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

load0=$(cut -d' ' -f1 /proc/loadavg)
printf '%-14s %5s %11s %8s %7s %7s %11s %8s %7s %7s %7s %6s\n' workload conns "nginx req/s" "p99 ms" "cpu us" spread "ours req/s" "p99 ms" "cpu us" spread ratio "p99"
for c in $CONNS; do
    for p in "${paths[@]}"; do
        nr_all=""; np_all=""; nc_all=""; or_all=""; op_all=""; oc_all=""
        for _ in $(seq "$ROUNDS"); do
            read -r nr np nc ns <<<"$(run $NGINX_MASTER $NGINX_PORT "$p" "$c")"
            read -r or op oc os <<<"$(run $OURS_MASTER "$OURS_PORT" "$p" "$c")"
            nr_all="$nr_all $nr"; np_all="$np_all $np"; nc_all="$nc_all $nc"
            or_all="$or_all $or"; op_all="$op_all $op"; oc_all="$oc_all $oc"
            if [ -n "${VERBOSE:-}" ]; then
                echo "  round: $p -c$c  nginx $nr req/s p99 $np ms  ours $or req/s p99 $op ms" >&2
            fi
        done
        awk -v w="$p" -v c="$c" -v ns="$ns" -v os="$os" \
            -v nr="$(median <<<"$nr_all")" -v np="$(median <<<"$np_all")" -v nc="$(median <<<"$nc_all")" \
            -v or="$(median <<<"$or_all")" -v op="$(median <<<"$op_all")" -v oc="$(median <<<"$oc_all")" 'BEGIN {
            printf "%-14s %5d %11.0f %8.2f %7.1f %7s %11.0f %8.2f %7.1f %7s %6.2fx %6s\n", w, c, nr, np, nc, ns, or, op, oc, os, or / nr, (op <= np) ? "ok" : "worse" }'
    done
done
echo "(medians of $ROUNDS round(s) of wrk -t2 -d$DUR, nginx and ours alternated; cpu us: worker CPU time per request; spread: most/fewest connections on one worker; ratio: ours/nginx req/s; ours: $BIN --workers 4 $SHMZONE_ARGS; ${NICE:+autogroup nice $NICE; }load average $load0 at the start, $(cut -d' ' -f1 /proc/loadavg) at the end)"

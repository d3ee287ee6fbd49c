#!/usr/bin/env bash
# The H workloads (../shared/WORKLOADS.md, "HTTP workloads"): the example
# server (examples/prefork_http.rs) against nginx + lua-nginx-module
# (benches/nginx-h.conf), both with 4 workers on loopback, alternated in one
# window: wrk -t2 -c64 and -c256 on /hit, /limit?key=me and, when the example
# server has /kv, GET /kv/k1 after one PUT. Prints requests/s, p99 latency
# and the ratio to nginx. Not run by CI.
#
#   benches/http_vs_nginx.sh               # -d10s, one round
#   DUR=3s ROUNDS=2 benches/http_vs_nginx.sh
#   SHMZONE_ARGS="--reuseport" benches/http_vs_nginx.sh
#
# Installs what is missing (Debian): nginx-light, libnginx-mod-http-lua, wrk.
set -euo pipefail
cd "$(dirname "$0")/.."

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

cargo build --release --example prefork_http >&2
BIN=target/release/examples/prefork_http

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
# shellcheck disable=SC2086
"$BIN" --workers 4 --listen "127.0.0.1:$OURS_PORT" --log warn $SHMZONE_ARGS >"$tmp/ours.out" 2>"$tmp/ours.err" &
pids+=($!)

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
    echo "(the example server has no /kv yet: PUT /kv/k1 answered $code; /kv skipped)" >&2
fi

# wrk's latency "99%  1.23ms" in milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000;
        printf "%.2f", n }'
}

# run PORT PATH CONNS -> "rps p99ms"
run() {
    local out rps p99
    out=$(wrk -t2 -c"$3" -d"$DUR" --latency "http://127.0.0.1:$1$2")
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
    echo "$rps $(to_ms "$p99")"
}

printf '%-16s %5s %12s %9s %12s %9s %7s %7s\n' workload conns "nginx req/s" "p99 ms" "ours req/s" "p99 ms" ratio "p99"
for c in $CONNS; do
    for p in "${paths[@]}"; do
        n_sum=0; o_sum=0; n_p99=0; o_p99=0
        for _ in $(seq "$ROUNDS"); do
            read -r nr np <<<"$(run $NGINX_PORT "$p" "$c")"
            read -r or op <<<"$(run "$OURS_PORT" "$p" "$c")"
            n_sum=$(awk -v a="$n_sum" -v b="$nr" 'BEGIN { print a + b }')
            o_sum=$(awk -v a="$o_sum" -v b="$or" 'BEGIN { print a + b }')
            n_p99=$(awk -v a="$n_p99" -v b="$np" 'BEGIN { print (b > a) ? b : a }')
            o_p99=$(awk -v a="$o_p99" -v b="$op" 'BEGIN { print (b > a) ? b : a }')
        done
        awk -v w="$p" -v c="$c" -v r="$ROUNDS" -v ns="$n_sum" -v os="$o_sum" -v np="$n_p99" -v op="$o_p99" 'BEGIN {
            n = ns / r; o = os / r;
            printf "%-16s %5d %12.0f %9.2f %12.0f %9.2f %6.2fx %7s\n", w, c, n, np, o, op, o / n, (op <= np) ? "ok" : "worse" }'
    done
done
echo "(requests/s: mean of $ROUNDS round(s) of -d$DUR, nginx and ours alternated; p99: the worst round)"

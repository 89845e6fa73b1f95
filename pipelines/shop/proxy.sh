#!/bin/sh
# Starts the example's proxy under its own prefix on loopback ports, once:
#   proxy.sh nginx DIR PORT BLUE GREEN         nginx, upstream `shop` in DIR/shop.inc
#   proxy.sh haproxy DIR PORT BLUE GREEN ADMIN [MORE…]
#                                               HAProxy, backend `shop` (servers on BLUE, GREEN
#                                               and MORE ports), runtime API on ADMIN
#   proxy.sh stop DIR                           stops whichever runs in DIR
# The proxy daemonizes: it outlives the step that starts it. A step's process
# group is stopped when the step ends, so the script returns only once the
# daemon has left that group (it writes its pid file after it has).
set -eu
# Running, not a zombie (an exited daemon whose parent has not reaped it).
alive() { [ -r "/proc/$1/stat" ] && ! grep -q ') Z ' "/proc/$1/stat"; }
wait_for() {
    for _ in $(seq 100); do [ -s "$1" ] && return 0; sleep 0.05; done
    echo "no $1 after 5s" >&2; return 1
}
kind=$1 dir=$2
mkdir -p "$dir/logs" "$dir/tmp"
case $kind in
nginx)
    port=$3 blue=$4 green=$5
    if [ -f "$dir/nginx.pid" ] && alive "$(cat "$dir/nginx.pid")"; then
        echo "nginx already runs on 127.0.0.1:$port"; exit 0
    fi
    [ -f "$dir/shop.inc" ] || echo "upstream shop { server 127.0.0.1:$blue; }" > "$dir/shop.inc"
    cat > "$dir/nginx.conf" <<CONF
worker_processes 2;
error_log $dir/logs/error.log;
pid $dir/nginx.pid;
events { worker_connections 1024; }
http {
    # The format the nginx-log analysis reads: when, which upstream, status, time.
    log_format pipe '\$msec \$upstream_addr \$status \$request_time';
    access_log $dir/logs/access.log pipe;
    client_body_temp_path $dir/tmp; proxy_temp_path $dir/tmp; fastcgi_temp_path $dir/tmp;
    uwsgi_temp_path $dir/tmp; scgi_temp_path $dir/tmp;
    include $dir/shop.inc;
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://shop;
            proxy_next_upstream error timeout http_502 http_503;
        }
    }
}
CONF
    rm -f "$dir/nginx.pid"
    nginx -p "$dir" -c nginx.conf -e "$dir/logs/error.log"
    wait_for "$dir/nginx.pid"
    echo "nginx serves 127.0.0.1:$port (prefix $dir)"
    ;;
haproxy)
    port=$3 blue=$4 green=$5 admin=$6
    shift 6
    # One server per slot, named after its port, in maintenance until routed.
    servers=""
    for p in "$blue" "$green" "$@"; do
        servers="$servers    server s$p 127.0.0.1:$p check inter 500ms disabled
"
    done
    if [ -f "$dir/haproxy.pid" ] && alive "$(cat "$dir/haproxy.pid")"; then
        echo "haproxy already runs on 127.0.0.1:$port"; exit 0
    fi
    cat > "$dir/haproxy.cfg" <<CONF
global
    stats socket ipv4@127.0.0.1:$admin level admin
    pidfile $dir/haproxy.pid
defaults
    mode http
    option http-keep-alive
    # A backend that dies mid-request: retry elsewhere (GETs are safe to retry).
    retries 3
    option redispatch
    retry-on all-retryable-errors
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 10s
frontend public
    bind 127.0.0.1:$port
    default_backend shop
backend shop
    option httpchk GET /health
$servers
CONF
    rm -f "$dir/haproxy.pid"
    haproxy -f "$dir/haproxy.cfg" -D
    wait_for "$dir/haproxy.pid"
    echo "haproxy serves 127.0.0.1:$port, runtime API on 127.0.0.1:$admin"
    ;;
stop)
    # Graceful stops: QUIT for nginx, USR1 for HAProxy; TERM if they linger.
    for pair in nginx.pid:QUIT haproxy.pid:USR1; do
        pidfile="$dir/${pair%%:*}"
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "-${pair##*:}" "$pid" 2>/dev/null || true
        for _ in $(seq 100); do alive "$pid" || break; sleep 0.05; done
        kill -TERM "$pid" 2>/dev/null || true
        rm -f "$pidfile"
        echo "stopped ${pair%%.pid*}"
    done
    ;;
esac

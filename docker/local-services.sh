#!/usr/bin/env bash
# Make sure PostgreSQL and Redis answer where DATABASE_URL and REDIS_URL point, and
# RabbitMQ where CELERY_BROKER_URL points when that is an amqp:// URL. With --for-tests
# (`make test`) also where the tests look for one (TEST_AMQP_URL, default 127.0.0.1:5672:
# the pipeline tests run on both brokers, in a virtual host of their own).
# Reuses running servers; otherwise starts the machine's own (pg_ctlcluster,
# redis-server, rabbitmq-server); where none is installed, installs Debian's packages and
# starts throwaway instances under ${SERVICES_DIR:-/tmp/ollamamax-services}.
# Remote hosts are only checked, never started.
# With --for-tests and as root, also installs HAProxy (never started here): the cluster tests (tests/cluster/)
# run it on a host of their own.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
SERVICES_DIR=${SERVICES_DIR:-/tmp/ollamamax-services}

read -r PG_HOST PG_PORT REDIS_HOST REDIS_PORT BROKER_URL < <("$PYTHON" - <<'PY'
from urllib.parse import urlsplit
from sqlalchemy.engine import make_url
from config.settings import get_settings
s = get_settings()
db = make_url(s.database_url)
redis = urlsplit(s.redis_url)
print(db.host or "127.0.0.1", db.port or 5432, redis.hostname or "127.0.0.1", redis.port or 6379,
      s.broker_url)
PY
)

say() { printf '[services] %s\n' "$*"; }
answers() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
is_local() { [[ $1 == 127.* || $1 == localhost || $1 == ::1 ]]; }
wait_for() {  # name host port
    for _ in $(seq 1 60); do answers "$2" "$3" && return 0; sleep 0.5; done
    say "$1 did not come up on $2:$3"; return 1
}
apt_install() {
    say "installing $* from Debian's packages"
    command -v apt-get >/dev/null || { say "no apt-get: install $* yourself"; return 1; }
    [[ -n ${APT_UPDATED:-} ]] || { apt-get update -qq; APT_UPDATED=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
    if answers "$PG_HOST" "$PG_PORT"; then say "PostgreSQL answers on $PG_HOST:$PG_PORT"; return; fi
    is_local "$PG_HOST" || { say "PostgreSQL at $PG_HOST:$PG_PORT does not answer"; return 1; }
    if command -v pg_ctlcluster >/dev/null && [[ -d /etc/postgresql ]] && [[ -n $(ls /etc/postgresql) ]]; then
        say "starting the machine's PostgreSQL cluster"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start || true
        answers "$PG_HOST" "$PG_PORT" && return
    fi
    local initdb
    initdb=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1 || true)
    [[ -n $initdb ]] || { apt_install postgresql; initdb=$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1); }
    local bin data=$SERVICES_DIR/postgres
    bin=$(dirname "$initdb")
    say "starting a throwaway PostgreSQL in $data on port $PG_PORT"
    mkdir -p "$SERVICES_DIR"
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    if [[ ! -f $data/PG_VERSION ]]; then
        install -d -o postgres "$data"
        runuser -u postgres -- "$bin/initdb" -D "$data" -U postgres --auth=trust >/dev/null
    fi
    runuser -u postgres -- "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w \
        -o "-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1" start >/dev/null
    wait_for PostgreSQL "$PG_HOST" "$PG_PORT"
}

ensure_redis() {
    if answers "$REDIS_HOST" "$REDIS_PORT"; then say "Redis answers on $REDIS_HOST:$REDIS_PORT"; return; fi
    is_local "$REDIS_HOST" || { say "Redis at $REDIS_HOST:$REDIS_PORT does not answer"; return 1; }
    command -v redis-server >/dev/null || apt_install redis-server
    mkdir -p "$SERVICES_DIR"
    say "starting a throwaway Redis on port $REDIS_PORT"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" \
        --appendonly no --dir "$SERVICES_DIR" --logfile "$SERVICES_DIR/redis.log"
    wait_for Redis "$REDIS_HOST" "$REDIS_PORT"
}

ensure_rabbitmq() {  # url
    local url=$1 host port
    host=$(sed -E 's#^[a-z]+://([^@/]*@)?([^:/]+).*#\2#' <<<"$url")
    port=$(sed -nE 's#^[a-z]+://([^@/]*@)?[^:/]+:([0-9]+).*#\2#p' <<<"$url")
    port=${port:-5672}
    if answers "$host" "$port"; then say "RabbitMQ answers on $host:$port"; return; fi
    is_local "$host" || { say "RabbitMQ at $host:$port does not answer"; return 1; }
    command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
    # A package install may have started it already.
    if ! answers "$host" "$port"; then
        mkdir -p "$SERVICES_DIR"
        say "starting the machine's RabbitMQ (rabbitmq-server) on port $port"
        RABBITMQ_NODE_PORT=$port setsid nohup rabbitmq-server >"$SERVICES_DIR/rabbitmq.log" 2>&1 &
    fi
    # The Erlang VM takes a while to boot.
    for _ in $(seq 1 120); do answers "$host" "$port" && return 0; sleep 0.5; done
    say "RabbitMQ did not come up on $host:$port (see $SERVICES_DIR/rabbitmq.log)"; return 1
}

ensure_haproxy() {
    command -v haproxy >/dev/null && return
    if [[ $(id -u) != 0 ]]; then say "no haproxy and not root: the cluster tests will be skipped"; return; fi
    apt_install haproxy || say "haproxy could not be installed: the cluster tests will be skipped"
}

ensure_postgres
ensure_redis
if [[ $BROKER_URL == amqp* ]]; then ensure_rabbitmq "$BROKER_URL"; fi
if [[ ${1:-} == --for-tests ]]; then
    ensure_rabbitmq "${TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672//}"
    ensure_haproxy
fi

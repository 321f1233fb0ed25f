#!/usr/bin/env bash
# Make PostgreSQL and Redis reachable on 127.0.0.1 for the test suite:
# start them if installed but stopped, install them from Debian's packages if missing.
# Also installs promtool, which the tests use on ops/alerts.
set -euo pipefail

PG_HOST=${LUNAS_TEST_PG_HOST:-127.0.0.1}
PG_PORT=${LUNAS_TEST_PG_PORT:-5432}
REDIS_PORT=${LUNAS_TEST_REDIS_PORT:-6379}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

pg_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

wait_for() {  # wait_for NAME CHECK
  for _ in $(seq 1 60); do "$2" && return 0; sleep 0.5; done
  echo "ensure-services: $1 did not come up" >&2; return 1
}

if ! pg_up; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "ensure-services: installing PostgreSQL from Debian packages"
    apt_install postgresql postgresql-client
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  if ! as_root pg_lsclusters -h | grep -q "^$version main"; then
    as_root pg_createcluster "$version" main
  fi
  hba=/etc/postgresql/$version/main/pg_hba.conf
  if ! grep -q "lunas-test trust" "$hba"; then
    # The tests connect as postgres over TCP without a password, as on the reference machine.
    as_root sh -c "printf 'host all all 127.0.0.1/32 trust # lunas-test trust\nhost all all ::1/128 trust # lunas-test trust\n' | cat - '$hba' > '$hba.new' && mv '$hba.new' '$hba'"
  fi
  echo "ensure-services: starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_for PostgreSQL pg_up
fi

if ! redis_up; then
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "ensure-services: installing Redis from Debian packages"
    apt_install redis-server
  fi
  echo "ensure-services: starting Redis"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for Redis redis_up
fi

if ! command -v pgbench >/dev/null 2>&1; then
  apt_install postgresql-contrib >/dev/null 2>&1 || true
fi
if ! command -v promtool >/dev/null 2>&1; then
  # promtool checks and unit-tests ops/alerts in the test suite; Debian ships it in prometheus.
  echo "ensure-services: installing promtool (Debian's prometheus package)"
  apt_install prometheus >/dev/null
fi
if ! command -v chromium >/dev/null 2>&1; then
  # The status page is rendered and screenshotted in headless Chromium by the test suite.
  echo "ensure-services: installing chromium (Debian's package)"
  apt_install chromium fonts-dejavu-core >/dev/null
fi
echo "ensure-services: PostgreSQL ${PG_HOST}:${PG_PORT} and Redis 127.0.0.1:${REDIS_PORT} are up"

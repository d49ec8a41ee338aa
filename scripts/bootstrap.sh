#!/usr/bin/env bash
# Create .venv with the project and its dev extra (once), and make sure the services the
# tests use answer: PostgreSQL, MariaDB and Redis on loopback (started here if not running).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import yokedcache_sa, fastapi, redis, pytest, aiomysql" 2>/dev/null; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
fi

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ensure_services() {
  if ! answers 6379; then
    if command -v redis-server >/dev/null; then
      mkdir -p /tmp/yokedcache-redis
      redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir /tmp/yokedcache-redis --logfile /tmp/yokedcache-redis/redis.log
    fi
  fi
  if ! answers 5432 && command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
  if ! answers 3306 && [ -x /usr/sbin/mariadbd ]; then
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  fi
  for _ in $(seq 1 60); do
    answers 6379 && answers 5432 && answers 3306 && return 0
    sleep 0.5
  done
  return 0  # the test fixtures report what is missing (and fail under CI=true)
}
ensure_services

#!/usr/bin/env bash
# Test services for sluice, as plain local processes (no Docker).
#
#   scripts/services.sh up       install what is missing, start everything, wait for ports
#   scripts/services.sh down     stop everything this script starts
#   scripts/services.sh status   show what is listening
#
# Runs as root on Debian 12 (apt-get, python3 + pip, cargo). Idempotent: `up` on a
# machine where all is installed and running only checks the ports.
#
# Fixed endpoints (what tests should use):
#   SLUICE_TEST_PG_URL=postgres://sluice:sluice@127.0.0.1:5432/sluice        (role sluice is SUPERUSER, wal_level=logical)
#   SLUICE_TEST_MYSQL_URL=mysql://sluice:sluice@127.0.0.1:3306/sluice        (MariaDB; sluice has ALL PRIVILEGES WITH GRANT OPTION)
#   SLUICE_TEST_MONGO_URL=mongodb://127.0.0.1:27017/?directConnection=true   (SecantusDB; advertises single-node replica set "secantus",
#                                                                             so mongodb://127.0.0.1:27017/?replicaSet=secantus works too)
#   AWS_ENDPOINT=http://127.0.0.1:9000 AWS_ACCESS_KEY_ID=sluiceaccess AWS_SECRET_ACCESS_KEY=sluicesecret123
#   AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true   bucket: lake   (s3s-fs, path-style URLs only: http://127.0.0.1:9000/lake/key)
#   SLUICE_TEST_CLICKHOUSE_URL=http://127.0.0.1:8123   user default, empty password (chDB behind tests/support/chfront.py)
#
# State (pid files, logs, data): ${SLUICE_SERVICES_DIR:-$HOME/.cache/sluice-services}
# Tools built here: $HOME/.cache/sluice-tools/bin/s3s-fs (cargo install, own target dir)
# PostgreSQL and MariaDB are the Debian packages' clusters (/var/lib/postgresql, /var/lib/mysql).
set -euo pipefail

export HOME="${HOME:-/root}"
[[ -d $HOME/.cargo/bin ]] && export PATH="$HOME/.cargo/bin:$PATH"

STATE="${SLUICE_SERVICES_DIR:-$HOME/.cache/sluice-services}"
TOOLS="$HOME/.cache/sluice-tools"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
PY="${PYTHON:-python3}"
WAIT_SECS="${SLUICE_SERVICES_WAIT:-60}"

S3_ACCESS=sluiceaccess
S3_SECRET=sluicesecret123
S3_BUCKET=lake
PG_VER=15

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() {  # name
  local f="$STATE/$1.pid"
  [[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

wait_port() {  # name port logfile
  local name=$1 port=$2 logf=$3 i
  for ((i = 0; i < WAIT_SECS * 5; i++)); do
    port_open "$port" && return 0
    sleep 0.2
  done
  log "$name did not open 127.0.0.1:$port within ${WAIT_SECS}s; last lines of $logf:"
  tail -n 30 "$logf" >&2 2>/dev/null || true
  exit 1
}

APT_UPDATED=0
apt_install() {
  if [[ $APT_UPDATED == 0 ]]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

py_scripts_dir() { "$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'; }

# start a background daemon: name port cmd...
start_bg() {
  local name=$1 port=$2; shift 2
  local logf="$STATE/$name.log"
  if port_open "$port"; then
    log "$name already listening on $port"
    return 0
  fi
  log "starting $name on 127.0.0.1:$port"
  # From $STATE, not the caller's folder: s3s-fs resolves every object's path
  # against its working directory, and fails each request (500, ENOENT) once
  # that folder is gone, e.g. a test clone deleted while the services run on.
  (cd "$STATE" && exec setsid nohup "$@" >>"$logf" 2>&1 </dev/null) &
  echo $! >"$STATE/$name.pid"
}

# ---------------------------------------------------------------- PostgreSQL
pg_up() {
  if [[ ! -x /usr/lib/postgresql/$PG_VER/bin/postgres ]]; then
    apt_install postgresql postgresql-contrib
  fi
  if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "$PG_VER main"; then
    log "creating PostgreSQL cluster $PG_VER/main"
    pg_createcluster "$PG_VER" main >/dev/null
  fi
  local conf=/etc/postgresql/$PG_VER/main/postgresql.conf need_restart=0
  if ! grep -Eq "^wal_level *= *'?logical" "$conf"; then
    printf "\n# added by sluice scripts/services.sh\nwal_level = logical\nlisten_addresses = '127.0.0.1'\nport = 5432\n" >>"$conf"
    need_restart=1
  fi
  if pg_lsclusters -h | awk -v v="$PG_VER" '$1==v && $2=="main"{print $4}' | grep -q online; then
    [[ $need_restart == 1 ]] && pg_ctlcluster "$PG_VER" main restart
  else
    log "starting PostgreSQL $PG_VER"
    pg_ctlcluster "$PG_VER" main start || {
      tail -n 30 "/var/log/postgresql/postgresql-$PG_VER-main.log" >&2 || true
      die "PostgreSQL did not start"
    }
  fi
  wait_port postgresql 5432 "/var/log/postgresql/postgresql-$PG_VER-main.log"
  runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 -d postgres >/dev/null <<'SQL'
DO $$BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sluice') THEN
    CREATE ROLE sluice LOGIN SUPERUSER PASSWORD 'sluice';
  ELSE
    ALTER ROLE sluice LOGIN SUPERUSER PASSWORD 'sluice';
  END IF;
END$$;
SQL
  if [[ -z $(runuser -u postgres -- psql -tAc "SELECT 1 FROM pg_database WHERE datname='sluice'" -d postgres) ]]; then
    runuser -u postgres -- createdb -O sluice sluice
  fi
}

pg_down() {
  if command -v pg_ctlcluster >/dev/null && pg_lsclusters -h 2>/dev/null | awk -v v="$PG_VER" '$1==v && $2=="main"{print $4}' | grep -q online; then
    log "stopping PostgreSQL"
    pg_ctlcluster "$PG_VER" main stop || true
  fi
}

# ---------------------------------------------------------------- MariaDB
mysql_up() {
  if ! command -v mariadbd >/dev/null && [[ ! -x /usr/sbin/mariadbd ]]; then
    apt_install mariadb-server
  fi
  local logf="$STATE/mariadb.log"
  if ! port_open 3306; then
    log "starting MariaDB"
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    if ! service mariadb start >>"$logf" 2>&1; then
      log "service mariadb start failed; starting mysqld_safe directly"
      setsid nohup mysqld_safe --bind-address=127.0.0.1 --port=3306 >>"$logf" 2>&1 </dev/null &
    fi
  fi
  wait_port mariadb 3306 "$logf"
  local i
  for ((i = 0; i < 50; i++)); do mariadb -uroot -e 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.2; done
  mariadb -uroot <<'SQL'
CREATE USER IF NOT EXISTS 'sluice'@'%' IDENTIFIED BY 'sluice';
CREATE USER IF NOT EXISTS 'sluice'@'localhost' IDENTIFIED BY 'sluice';
ALTER USER 'sluice'@'%' IDENTIFIED BY 'sluice';
ALTER USER 'sluice'@'localhost' IDENTIFIED BY 'sluice';
GRANT ALL PRIVILEGES ON *.* TO 'sluice'@'%' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO 'sluice'@'localhost' WITH GRANT OPTION;
CREATE DATABASE IF NOT EXISTS sluice;
FLUSH PRIVILEGES;
SQL
}

mysql_down() {
  if port_open 3306 && command -v mariadb-admin >/dev/null; then
    log "stopping MariaDB"
    service mariadb stop >/dev/null 2>&1 || mariadb-admin -uroot shutdown >/dev/null 2>&1 || true
  fi
}

# ---------------------------------------------------------------- SecantusDB (MongoDB wire protocol)
mongo_up() {
  local bin
  bin="$(py_scripts_dir)/secantusd-py"
  if [[ ! -x $bin ]]; then
    log "pip install secantusdb"
    "$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore secantusdb >&2
  fi
  mkdir -p "$STATE/mongo"
  start_bg secantus 27017 "$bin" --host 127.0.0.1 --port 27017 --storage-path "$STATE/mongo"
  wait_port secantus 27017 "$STATE/secantus.log"
}

# ---------------------------------------------------------------- s3s-fs (S3)
# s3s-fs 0.14.1 leaves Nagle's algorithm on for the sockets it accepts: it writes a
# response's headers and body separately, so the body waits for the client's
# delayed ACK, ~40 ms on every request (strace: headers, then the body 42 ms
# later). MinIO and S3 set TCP_NODELAY; so does the s3s-fs built here, from the
# crate's source with one line added after `accept`.
# Its recursive LIST also walks the whole bucket whatever the prefix, so a LIST
# costs seconds once the tests have left tens of thousands of objects there (every
# Delta table read lists its `_delta_log/`); the build here starts the walk at the
# prefix's folder, as S3's index does.
S3S_FS_BUILD=0.14.1-nodelay-prefixlist
s3_up() {
  local bin="$TOOLS/bin/s3s-fs"
  if [[ ! -x $bin || $(cat "$TOOLS/s3s-fs.build" 2>/dev/null) != "$S3S_FS_BUILD" ]]; then
    log "building s3s-fs $S3S_FS_BUILD (a few minutes, once)"
    local src="$TOOLS/src/s3s-fs-0.14.1"
    rm -rf "$src" && mkdir -p "$TOOLS/src"
    curl -sSfL https://static.crates.io/crates/s3s-fs/s3s-fs-0.14.1.crate | tar -xz -C "$TOOLS/src" \
      || die "downloading the s3s-fs 0.14.1 crate failed"
    sed -i 's|^\( *\)let conn = http_server.serve_connection(TokioIo::new(socket)|\1let _ = socket.set_nodelay(true);\n&|' \
      "$src/src/main.rs"
    grep -q 'socket.set_nodelay(true)' "$src/src/main.rs" || die "patching s3s-fs (set_nodelay) failed"
    perl -0pi -e 's/(async fn list_objects_recursive\(.*?\n\s*let mut dir_queue: VecDeque<PathBuf> = default\(\);\n)(\s*)dir_queue\.push_back\(bucket_root\.to_owned\(\)\);/$1$2let start = match prefix.rfind(\x27\/\x27) { Some(i) => bucket_root.join(&prefix[..i]), None => bucket_root.to_owned() };\n$2if !start.is_dir() { return Ok(()); }\n$2dir_queue.push_back(start);/s' \
      "$src/src/s3.rs"
    grep -q 'dir_queue.push_back(start)' "$src/src/s3.rs" || die "patching s3s-fs (LIST from the prefix) failed"
    CARGO_TARGET_DIR="$HOME/.cache/s3s-fs-build" cargo install --path "$src" --locked --force \
      --features binary --root "$TOOLS" >"$STATE/s3s-fs-install.log" 2>&1 || {
      tail -n 30 "$STATE/s3s-fs-install.log" >&2
      die "building s3s-fs failed"
    }
    echo "$S3S_FS_BUILD" >"$TOOLS/s3s-fs.build"
  fi
  mkdir -p "$STATE/s3/$S3_BUCKET"
  start_bg s3s-fs 9000 "$bin" --host 127.0.0.1 --port 9000 \
    --access-key "$S3_ACCESS" --secret-key "$S3_SECRET" "$STATE/s3"
  wait_port s3s-fs 9000 "$STATE/s3s-fs.log"
}

# ---------------------------------------------------------------- ClickHouse (chDB behind chfront.py)
ch_up() {
  if ! "$PY" -c 'import chdb, lz4.block, clickhouse_cityhash.cityhash' >/dev/null 2>&1; then
    log "pip install chdb-core lz4 clickhouse-cityhash"
    "$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps \
      chdb-core lz4 clickhouse-cityhash >&2
  fi
  mkdir -p "$STATE/clickhouse"
  start_bg chfront 8123 "$PY" "$REPO/tests/support/chfront.py" --host 127.0.0.1 --port 8123 \
    --data "$STATE/clickhouse"
  wait_port chfront 8123 "$STATE/chfront.log"
  "$PY" - <<'PY' || die "chfront answers on 8123 but GET /ping is not Ok."
import time, urllib.request
for _ in range(50):
    try:
        if urllib.request.urlopen("http://127.0.0.1:8123/ping", timeout=5).read() == b"Ok.\n":
            raise SystemExit(0)
    except OSError:
        pass
    time.sleep(0.2)
raise SystemExit(1)
PY
  return 0
}

stop_pidfile() {  # name
  local f="$STATE/$1.pid" pid i
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $1 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

status() {
  local s name port
  for s in postgresql:5432 mariadb:3306 secantus:27017 s3s-fs:9000 chfront:8123; do
    name=${s%%:*} port=${s##*:}
    if port_open "$port"; then printf '  %-11s 127.0.0.1:%-5s up\n' "$name" "$port"
    else printf '  %-11s 127.0.0.1:%-5s DOWN\n' "$name" "$port"; fi
  done
}

summary() {
  cat <<EOF
sluice test services are up (state: $STATE)
  SLUICE_TEST_PG_URL=postgres://sluice:sluice@127.0.0.1:5432/sluice
  SLUICE_TEST_MYSQL_URL=mysql://sluice:sluice@127.0.0.1:3306/sluice
  SLUICE_TEST_MONGO_URL=mongodb://127.0.0.1:27017/?directConnection=true
  AWS_ENDPOINT=http://127.0.0.1:9000 AWS_ACCESS_KEY_ID=$S3_ACCESS AWS_SECRET_ACCESS_KEY=$S3_SECRET AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true  (bucket: $S3_BUCKET)
  SLUICE_TEST_CLICKHOUSE_URL=http://127.0.0.1:8123  (user default, no password)
EOF
}

case "${1:-}" in
  up)
    [[ $(id -u) == 0 ]] || die "run as root"
    mkdir -p "$STATE"
    pg_up
    mysql_up
    mongo_up
    s3_up
    ch_up
    summary
    ;;
  down)
    stop_pidfile chfront
    stop_pidfile s3s-fs
    stop_pidfile secantus
    mysql_down
    pg_down
    ;;
  status)
    status
    ;;
  *)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Start N copies of `alembic upgrade head` at once on an empty database, first bare, then
# each wrapped by `schemagate migrate`, and count how many failed and how.
#
#   examples/alembic/race.sh [N]
#
# Needs: a PostgreSQL superuser URL in ADMIN_URL (default postgres://postgres@127.0.0.1/postgres),
# python3, and a built schemagate (target/release or target/debug, or SCHEMAGATE=path).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
n=${1:-20}
admin=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
sg=${SCHEMAGATE:-$( [ -x "$root/target/release/schemagate" ] && echo "$root/target/release/schemagate" || echo "$root/target/debug/schemagate")}
venv=$(realpath -m "${VENV:-$root/target/alembic-venv}")
if [ ! -x "$venv/bin/alembic" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r "$here/requirements.txt"
fi
export PATH="$venv/bin:$PATH"
head=$(cd "$here" && alembic heads | awk '{print $1}')
base=${admin%/*}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

race() { # name, command...
  local name=$1; shift
  local db="sg_race_${name}_$$"
  "$sg" status --database-url "$admin" >/dev/null 2>&1 || true
  python3 - "$admin" "$db" <<'PY'
import sys, psycopg
url, db = sys.argv[1], sys.argv[2]
with psycopg.connect(url.replace("postgres://", "postgresql://", 1), autocommit=True) as c:
    c.execute(f"DROP DATABASE IF EXISTS {db}")
    c.execute(f"CREATE DATABASE {db}")
PY
  export DATABASE_URL="$base/$db"
  local pids=()
  for i in $(seq 1 "$n"); do
    (cd "$here"; rc=0; "$@" >"$work/$name.$i.log" 2>&1 || rc=$?; echo "$rc" >"$work/$name.$i.rc") &
    pids+=($!)
  done
  wait "${pids[@]}"
  local failed=0
  for i in $(seq 1 "$n"); do [ "$(cat "$work/$name.$i.rc")" = 0 ] || failed=$((failed + 1)); done
  echo "$name: $n started, $((n - failed)) exited 0, $failed failed"
  if [ "$failed" -gt 0 ]; then
    echo "  how they failed (count, last error line):"
    for i in $(seq 1 "$n"); do
      [ "$(cat "$work/$name.$i.rc")" = 0 ] || grep -E "^[a-zA-Z_.]+(Error|Exception)|UniqueViolation|DuplicateTable" "$work/$name.$i.log" | tail -n 1
    done | sed -E 's/\(Background on this error.*//; s/DETAIL.*//' | cut -c1-160 | sort | uniq -c | sort -rn | sed 's/^/  /'
  fi
  python3 - "$DATABASE_URL" <<'PY'
import sys, psycopg
with psycopg.connect(sys.argv[1].replace("postgres://", "postgresql://", 1)) as c:
    v = c.execute("SELECT version_num FROM alembic_version").fetchall()
    a = c.execute("SELECT revision, count(*) FROM revision_audit GROUP BY 1 ORDER BY 1").fetchall()
    print(f"  alembic_version: {[r[0] for r in v]}; revisions run: {dict(a)}")
PY
  python3 - "$admin" "$db" <<'PY'
import sys, psycopg
with psycopg.connect(sys.argv[1].replace("postgres://", "postgresql://", 1), autocommit=True) as c:
    c.execute(f"DROP DATABASE IF EXISTS {sys.argv[2]} WITH (FORCE)")
PY
}

race bare alembic upgrade head
race schemagate "$sg" migrate --version "$head" -- alembic upgrade head

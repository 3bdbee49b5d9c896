"""The fleet benchmark (issue 24), on a throwaway cluster (bench.py's `Cluster`):

1. noop: N up-to-date schemas verified by `schemagate fleet --parallel 32`, against a shell
   loop over `schemagate migrate` and, when installed (bench/run puts it under
   target/bench-tools), over `sqlx migrate run`, on the same schemas;
2. kill: 1,000 schemas applied by fleets SIGKILLed at random moments, then a rerun: every
   migration of every schema counted (0 double applies, 0 missing);
3. max-failed: 1,000 schemas with 3% of them broken at random, `--max-failed 2%`: the
   targets left unstarted are a suffix of the list and have nothing of the run in them.

Run through `bench/fleet` (it builds the release binary and the venv). Prints the figures;
BENCHMARKS.md records them by hand with the command.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).parent))
from bench import Cluster  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("SCHEMAGATE_BIN", ROOT / "target/release/schemagate"))
SQLX = ROOT / "target/bench-tools/sqlx/bin/sqlx"

MIGRATIONS = {
    "0001_log.sql": "CREATE TABLE apply_log (version int); INSERT INTO apply_log VALUES (1);",
    "0002_users.sql": "CREATE TABLE users (id int PRIMARY KEY, name text); INSERT INTO apply_log VALUES (2);",
    "0003_orders.sql": "CREATE TABLE orders (id int, user_id int); CREATE INDEX ON orders (user_id); "
    "INSERT INTO apply_log VALUES (3);",
}


def source() -> Path:
    d = Path(tempfile.mkdtemp(prefix="schemagate-fleet-src-"))
    for name, sql in MIGRATIONS.items():
        (d / name).write_text(sql)
    return d


def names(n: int) -> list[str]:
    return [f"t{i:05d}" for i in range(n)]


def targets_file(ns: list[str]) -> Path:
    f = Path(tempfile.mkstemp(prefix="schemagate-fleet-", suffix=".txt")[1])
    f.write_text("\n".join(ns) + "\n")
    return f


def fleet(url: str, tf: Path, src: Path, *extra: str) -> list[str]:
    return [str(BIN), "fleet", "--targets", str(tf), "--source", str(src), "--database-url", url,
            "--json", *extra]


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMAGATE_") and k != "DATABASE_URL"}
    e["SCHEMAGATE_LOG"] = "warn"
    return e


def clone_schemas(url: str, template: str, ns: list[str]) -> None:
    """Copy `template`'s tables (rows included) into each of `ns`: up-to-date schemas as
    fast as SQL makes them."""
    with psycopg.connect(url, autocommit=True) as c:
        tables = [r[0] for r in c.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (template,))]
        for i in range(0, len(ns), 200):
            stmts = []
            for s in ns[i:i + 200]:
                stmts.append(f"CREATE SCHEMA {s};")
                for t in tables:
                    stmts.append(f"CREATE TABLE {s}.{t} (LIKE {template}.{t} INCLUDING ALL);"
                                 f"INSERT INTO {s}.{t} SELECT * FROM {template}.{t};")
            c.execute("".join(stmts))


def noop_case(cl: Cluster, n: int, loop_n: int) -> dict:
    db = cl.fresh_db()
    url = cl.url(db)
    src = source()
    # One schema migrated for real, then cloned: every clone is up to date.
    subprocess.run(fleet(url, targets_file(["tpl"]), src), check=True, env=env(),
                   stdout=subprocess.DEVNULL)
    ns = names(n)
    clone_schemas(url, "tpl", ns)
    tf = targets_file(ns)
    runs = []
    for _ in range(3):
        t = time.monotonic()
        out = subprocess.run(fleet(url, tf, src, "--parallel", "32"), env=env(), capture_output=True, text=True)
        runs.append(time.monotonic() - t)
        summary = json.loads(out.stdout)
        assert out.returncode == 0 and summary["up_to_date"] == n, (out.returncode, summary["up_to_date"], out.stderr[-2000:])
    res = {"n": n, "fleet_s": sorted(runs)[1], "fleet_runs": runs}
    # Loops by hand, sequential, on the first loop_n schemas.
    loop = ns[:loop_n]
    t = time.monotonic()
    for s in loop:
        subprocess.run([str(BIN), "migrate", "--source", str(src), "--database-url", url,
                        "--table", f"{s}.schemagate_marker", "--migrations-table", f"{s}._sqlx_migrations"],
                       check=True, env=env(), stdout=subprocess.DEVNULL)
    res["loop_migrate"] = (loop_n, time.monotonic() - t)
    if SQLX.exists():
        t = time.monotonic()
        for s in loop:
            subprocess.run([str(SQLX), "migrate", "run", "--source", str(src), "--database-url",
                            f"{url}&options=-csearch_path%3D{s}"],
                           check=True, env=env(), stdout=subprocess.DEVNULL)
        res["loop_sqlx"] = (loop_n, time.monotonic() - t)
    return res


def per_schema(url: str, ns: list[str]) -> dict[str, str]:
    with psycopg.connect(url) as c:
        got = {}
        for s in ns:
            try:
                row = c.execute(f"SELECT string_agg(version::text, ',' ORDER BY version) FROM {s}.apply_log").fetchone()
                got[s] = row[0] or ""
            except psycopg.errors.UndefinedTable:
                c.rollback()
                got[s] = ""
            except psycopg.errors.InvalidSchemaName:
                c.rollback()
                got[s] = ""
        return got


def kill_case(cl: Cluster, n: int, kills: int, seed: int) -> dict:
    rng = random.Random(seed)
    url = cl.url(cl.fresh_db())
    src = source()
    ns = names(n)
    tf = targets_file(ns)
    killed_at = []
    for _ in range(kills):
        p = subprocess.Popen(fleet(url, tf, src, "--parallel", "32"), env=env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        delay = rng.uniform(0.2, 3.0)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        killed_at.append(round(delay, 2))
    out = subprocess.run(fleet(url, tf, src, "--parallel", "32"), env=env(), capture_output=True, text=True)
    summary = json.loads(out.stdout)
    got = per_schema(url, ns)
    double = sum(1 for v in got.values() if len(v.split(",")) > len(set(v.split(","))))
    missing = sum(1 for v in got.values() if v != "1,2,3" and len(v.split(",")) == len(set(v.split(","))))
    return {"n": n, "killed_after_s": killed_at, "rerun_exit": out.returncode,
            "rerun_applied": summary["applied"], "rerun_up_to_date": summary["up_to_date"],
            "double_applies": double, "missing": missing}


def max_failed_case(cl: Cluster, n: int, broken_share: float, seed: int) -> dict:
    rng = random.Random(seed)
    url = cl.url(cl.fresh_db())
    src = source()
    ns = names(n)
    broken = set(rng.sample(ns, int(n * broken_share)))
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("".join(f"CREATE SCHEMA {s}; CREATE TABLE {s}.apply_log (version int);" for s in broken))
    tf = targets_file(ns)
    out = subprocess.run(fleet(url, tf, src, "--parallel", "32", "--max-failed", "2%"), env=env(),
                         capture_output=True, text=True)
    summary = json.loads(out.stdout)
    states = [r["state"] for r in summary["results"]]
    first_skipped = states.index("skipped") if "skipped" in states else len(states)
    suffix = all(s == "skipped" for s in states[first_skipped:])
    skipped = [r["target"] for r in summary["results"] if r["state"] == "skipped"]
    with psycopg.connect(url) as c:
        touched = c.execute(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'schemagate_marker' AND schemaname = ANY(%s)",
            (skipped,)).fetchone()[0]
    return {"n": n, "broken": len(broken), "tolerated": int(n * 0.02), "exit": out.returncode,
            "failed": summary["failed"], "skipped": summary["skipped"], "stopped": summary.get("stopped"),
            "skipped_are_a_suffix": suffix, "skipped_with_a_marker": touched}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--schemas", type=int, default=10000)
    ap.add_argument("--loop", type=int, default=500, help="schemas the shell loops go over")
    ap.add_argument("--kill-schemas", type=int, default=1000)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--seed", type=int, default=24)
    args = ap.parse_args()
    cl = Cluster()
    try:
        print(json.dumps({"noop": noop_case(cl, args.schemas, args.loop)}), flush=True)
        print(json.dumps({"kill": kill_case(cl, args.kill_schemas, args.kills, args.seed)}), flush=True)
        print(json.dumps({"max_failed": max_failed_case(cl, 1000, 0.03, args.seed)}), flush=True)
    finally:
        cl.stop()


if __name__ == "__main__":
    main()

"""schemagate benchmark. Run through bench/run, which installs what this needs.

Every case runs the tools in turn, run by run (tool A, tool B, ..., then again), so slow
drift of the machine hits every tool alike; figures are medians (p50/p99 for latencies).
A throwaway cluster is started for the run: nothing else uses the server meanwhile.
"""

import argparse
import os
import platform
import pwd
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
SG = ROOT / "target/release/schemagate"
TOOLS = ROOT / "target/bench-tools"
SQLX = TOOLS / "sqlx/bin/sqlx"
DBMATE = TOOLS / "dbmate/node_modules/.bin/dbmate"
ALEMBIC = ROOT / "target/bench-venv/bin/alembic"
SQLX_LIB = TOOLS / "sqlx-lib/release/sqlx-lib-migrate"
GNU_TIME = Path("/usr/bin/time")


def pg_bin() -> Path:
    dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not dirs:
        sys.exit("bench: PostgreSQL server binaries not found under /usr/lib/postgresql")
    return dirs[-1]


PSQL = pg_bin() / "psql"  # the real binary, not Debian's wrapper script


# ----- the throwaway cluster -----

class Cluster:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="schemagate-bench-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        root = os.geteuid() == 0
        if root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.as_pg = ["runuser", "-u", "postgres", "--"] if root else []
        data = self.dir / "data"
        self.run([str(pg_bin() / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
        conf = (
            f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.dir}'\n"
            "max_connections = 300\nshared_buffers = 256MB\nmax_locks_per_transaction = 1024\n"
            # The bench creates hundreds of throwaway databases: autovacuum workers visiting
            # them would be noise in every measure, the race's server CPU most of all.
            "autovacuum = off\n"
        )
        (data / "postgresql.auto.conf").write_text(conf)
        self.run([str(pg_bin() / "pg_ctl"), "-D", str(data), "-l", str(self.dir / "log"), "-w", "start"])
        self.admin = self.url("postgres")
        self.n = 0
        self.postmaster = int((data / "postmaster.pid").read_text().split()[0])

    def cpu_ms(self) -> float:
        """CPU time of the server so far: the postmaster's own (its forks) and that of its
        children that have exited (every back-end, once its client has gone)."""
        fields = Path(f"/proc/{self.postmaster}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) * 1000 / os.sysconf("SC_CLK_TCK")

    def children(self) -> set[int]:
        pm = self.postmaster
        return {int(p) for p in Path(f"/proc/{pm}/task/{pm}/children").read_text().split()}

    def settle(self, keep: set[int]) -> None:
        """Until every child of the postmaster but `keep` (its own auxiliary processes and a
        connection held open) has exited: a back-end leaves pg_stat_activity before it has
        unmapped the shared memory, so its exit costs CPU after it is no longer listed, and
        `cpu_ms` counts a child only once it has exited."""
        while self.children() - keep:
            time.sleep(0.005)

    def run(self, cmd: list[str]) -> None:
        subprocess.run(self.as_pg + cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def url(self, db: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}?sslmode=disable"

    def fresh_db(self) -> str:
        self.n += 1
        name = f"b{self.n}"
        with psycopg.connect(self.admin, autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return name

    def stop(self) -> None:
        subprocess.run(self.as_pg + [str(pg_bin() / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)


# ----- measuring one process -----

def timed(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[float, int, int]:
    """(seconds, exit code, peak RSS in KiB) of one process."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    elapsed = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    return elapsed, p.returncode, usage.ru_maxrss


def peak_rss_kb(cmd: list[str], env: dict | None = None, cwd: Path | None = None, check: bool = False) -> int:
    """Peak RSS of `cmd` in KiB, from GNU time: its child is forked from a small process,
    so the figure is not inflated by this Python's pages as a fork from here would be."""
    with tempfile.NamedTemporaryFile() as out:
        subprocess.run([str(GNU_TIME), "-f", "%M", "-o", out.name, *cmd], env=env, cwd=cwd, check=check,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return int(Path(out.name).read_text().split()[-1])


def env_with(url: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMAGATE_") and k != "DATABASE_URL"}
    env["DATABASE_URL"] = url
    env.update(extra)
    return env


# ----- migration sets, one layout per tool -----

def migration_sql(i: int) -> str:
    return f"CREATE TABLE t{i} (id bigint PRIMARY KEY, v text);\nCREATE INDEX t{i}_v ON t{i} (v);\n"


def logged_sql(i: int) -> str:
    return f"CREATE TABLE t{i} (id int);\nINSERT INTO apply_log VALUES ({i});\n"


class Sets:
    """The same N migrations as a sqlx directory, a dbmate directory, an Alembic project
    and one psql file."""

    def __init__(self, base: Path, n: int, body=migration_sql, prologue: str = "") -> None:
        self.n = n
        self.sqlx = base / f"sqlx-{n}"
        self.dbmate = base / f"dbmate-{n}"
        self.alembic = base / f"alembic-{n}"
        self.psql = base / f"all-{n}.sql"
        for d in (self.sqlx, self.dbmate, self.alembic / "versions"):
            d.mkdir(parents=True)
        all_sql = [prologue] if prologue else []
        if prologue:
            # sqlx versions are positive for schemagate: the prologue opens migration 1.
            (self.dbmate / "0_prologue.sql").write_text(f"-- migrate:up\n{prologue}\n-- migrate:down\n")
        for i in range(1, n + 1):
            sql = body(i)
            all_sql.append(sql)
            (self.sqlx / f"{i}_m{i}.sql").write_text((prologue if i == 1 else "") + sql)
            (self.dbmate / f"{i}_m{i}.sql").write_text(f"-- migrate:up\n{sql}\n-- migrate:down\n")
        self.psql.write_text("".join(all_sql))
        self.head = str(n)
        # The same directory with the digest file an image build writes (`schemagate digest`).
        self.digested = base / f"sqlx-{n}-digested"
        shutil.copytree(self.sqlx, self.digested)
        subprocess.run([str(SG), "digest", "--source", str(self.digested)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        (self.alembic / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s\n")
        (self.alembic / "env.py").write_text(
            "import os\nfrom alembic import context\nfrom sqlalchemy import create_engine, pool\n"
            "url = os.environ['DATABASE_URL'].split('?')[0].replace('postgres://', 'postgresql+psycopg://', 1)\n"
            "engine = create_engine(url, poolclass=pool.NullPool)\n"
            "with engine.connect() as c:\n"
            "    context.configure(connection=c, target_metadata=None)\n"
            "    with context.begin_transaction():\n"
            "        context.run_migrations()\n"
        )
        revs = (["p"] if prologue else []) + [str(i) for i in range(1, n + 1)]
        bodies = ([prologue] if prologue else []) + [body(i) for i in range(1, n + 1)]
        prev = None
        for rev, sql in zip(revs, bodies):
            (self.alembic / "versions" / f"r{rev}.py").write_text(
                f"from alembic import op\nrevision = {rev!r}\ndown_revision = {prev!r}\n"
                f"branch_labels = None\ndepends_on = None\n"
                f"def upgrade():\n    op.execute({sql!r})\n"
            )
            prev = rev


def commands(tool: str, sets: Sets, url: str) -> tuple[list[str], dict, Path | None]:
    env = env_with(url)
    if tool == "schemagate":
        return [str(SG), "migrate", "--source", str(sets.digested)], env, None
    if tool == "schemagate, no digest file":
        return [str(SG), "migrate", "--source", str(sets.sqlx)], env, None
    if tool == "schemagate 1tx":
        return [str(SG), "migrate", "--single-transaction", "--source", str(sets.sqlx)], env, None
    if tool == "sqlx library":
        return [str(SQLX_LIB), str(sets.sqlx)], env, None
    if tool == "sqlx-cli":
        return [str(SQLX), "migrate", "run", "--source", str(sets.sqlx), "--database-url", url], env, None
    if tool == "dbmate":
        return [str(DBMATE), "--url", url, "--migrations-dir", str(sets.dbmate), "--no-dump-schema", "up"], env, None
    if tool == "alembic":
        return [str(ALEMBIC), "-c", str(sets.alembic / "alembic.ini"), "upgrade", "head"], env, None
    if tool == "psql 1tx":
        return [str(PSQL), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-f", str(sets.psql), url], env, None
    if tool == "psql autocommit":
        return [str(PSQL), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(sets.psql), url], env, None
    if tool == "psql autocommit, async":
        env["PGOPTIONS"] = "-c synchronous_commit=off"
        return [str(PSQL), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(sets.psql), url], env, None
    raise ValueError(tool)


PROBE = """## The cost of `--lock auto`'s probe (PostgreSQL, the locked path only)

The proof that decides between the advisory lock and the lease (`src/lock/probe.rs`) runs
once per run that goes past the fast path and may take the lock, never on the fast path. It
costs one short extra connection and three short queries (the engine and startup-pid check
rides on the lock connection's first query). Measured on 2026-11-26 against the local
PostgreSQL 15 on 127.0.0.1 (trust auth), release build, median of 20 runs, from the probe's
own debug line (not by this bench):

```sh
for i in $(seq 20); do SCHEMAGATE_LOG=debug target/release/schemagate stamp v1 \\
  --database-url postgres://postgres@127.0.0.1/probebench 2>&1 | grep -o 'probe took .*'; done
```

| connection | probe, median of 20 |
| --- | --- |
| TLS (`sslmode=prefer`, the server has a certificate) | 5.8 ms |
| plain TCP (`sslmode=disable`) | 3.4 ms |

Most of it is the second connection's backend start-up (and TLS handshake). `--lock lease`
skips the probe.

"""

NOTES = """## How the targets are met, and where they are not

- **K processes racing.** On 2 cores, 50 process starts and 50 server back-ends are most of
  the wall time (the race table's CPU column: several ms of server CPU per racer, for either
  tool), so what a racer adds to them is what counts. A racer that finds the lock held, or
  another run proving it, `LISTEN`s on the connection it holds and leaves at the marker's
  commit; it does not run the advisory-lock proof itself: `migrate` proves on the lock's
  probe key, which the lock connection's first statement already tries to take (on a
  session proven direct, with the lock free), so the run that proves claims the proof, and
  the others learn it is claimed, without a round trip of their own; a race opens one extra
  connection, not one per racer that arrived early. Whether the lock is held is asked with a
  transaction-level try, not from `pg_locks`, which copies the server's whole lock table
  each time (0.7 ms here with `max_locks_per_transaction = 1024`). The lock holder creates
  both tables in one commit and does not ask for its session id again. Process start-up:
  only the subcommand given has its arguments built (half of a no-op run's instructions were
  clap building all eight). Still never a blocking `pg_advisory_lock` (a blocked locker
  holds a snapshot that `CREATE INDEX CONCURRENTLY` in the holder's migration waits on:
  deadlock); the try-lock poll stays, every half second, as the fallback and the way to
  take over from a holder that died. sqlx's library hands its lock from loser to loser one
  at a time after the winner: its racers block in the server early, which leaves the CPU to
  the launcher while it starts the rest, and then pay their queries one after another. The
  CPU both spend per racer is about the same (the CPU column), so the ratio moves from run
  to run: runs of four races each, on a quiet machine while this was built, ranged from
  about 0.9× to 1.1×; on a loaded machine the hand-over costs sqlx most.
- **The no-op path, and N.** `migrate --source` must compare the source's digest with the
  marker's. Without help that is an open, a read, a hash and a close per file (the `no
  digest file` rows). With the digest file an image build writes (`schemagate digest`), the
  run parses the file's claim, asks the marker about it, and meanwhile a second thread checks
  the directory against the file: each `.sql` file's name, size and modification time. The
  answer counts only once the check has passed. The check is what keeps the file honest (a
  new, removed, renamed, resized or later-modified migration voids it), and it costs a
  directory entry and a `statx` per file: about 1 µs of kernel time each on this machine,
  plus user-space work (the callgrind table). With a core free it runs entirely beside the
  connection's start-up and the query, and N does not show in the wall time; when the
  machine is saturated, wall time follows CPU time, and the check's CPU does show. No
  per-file check is skipped to make N disappear. `wait --source` uses the digest file the same
  way (without the thread: it checks before it connects).
- **Apply.** One transactional migration is one round trip (BEGIN, the file, the
  `_sqlx_migrations` row, COMMIT) and one WAL flush, where psql's autocommit floor pays one
  per statement. What schemagate adds per migration is the bookkeeping row and two log
  lines; a run that takes the lock also pays a fixed few ms (the probe's second connection,
  the tables, the marker).
- **Fair peers.** `bench/sqlx-lib` is built with schemagate's patched sqlx-core (TCP_NODELAY)
  and sqlx-postgres; sqlx-cli is the release from crates.io.
- **`synchronous_commit = off`** (the `psql autocommit, async` row) would save about one WAL
  flush per migration on this disk. schemagate does not adopt it: `--single-transaction`
  removes those flushes with nothing to prove after a crash, and per-migration commits stay
  durable.
"""

# The last section of BENCHMARKS.md, written by hand from `schemagate smoke --rolling`.
ROLLING = "## Rolling updates with expand/contract"

# Issue 16's figures before this run, as BENCHMARKS.md recorded them: (before issue 16,
# the previous run, with the one before it). The column "this run" is measured.
ISSUE16 = {
    "race": ("1.28× (sqlx peer without TCP_NODELAY)", "0.94× (the one before: 1.10×)"),
    "apply": ("1.02× (1.13× in a re-measure)", "1.15× (the one before: 0.60×)"),
    "noop_floor": ("1.12×", "0.74× (the one before: 0.79×)"),
    "flat": ("1.51×", "1.31× (the one before: 1.46×)"),
    "callgrind": ("19,155,669 / 2,033,306 = 9.42× (the binary before issue 16)", "2,505,811 / 1,440,290 = 1.74×"),
}


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


# ----- the cases -----

def apply_case(cl: Cluster, sets: Sets, tools: list[str], runs: int) -> dict:
    times: dict[str, list[float]] = {t: [] for t in tools}
    for _ in range(runs):
        for tool in tools:
            url = cl.url(cl.fresh_db())
            cmd, env, cwd = commands(tool, sets, url)
            t, code, _ = timed(cmd, env, cwd)
            if code != 0:
                raise SystemExit(f"bench: {tool} failed applying {sets.n} migrations (exit {code}): {' '.join(cmd)}")
            times[tool].append(t)
    return {t: median(v) for t, v in times.items()}


def noop_case(cl: Cluster, sets: dict, tools: list[str], runs: int) -> dict:
    """The no-op run at every size in `sets`, sizes and tools taking turns run by run (so a
    ratio between sizes, flat in N or not, is measured under one load): {N: (medians, peak
    RSS)}."""
    cases: dict[int, dict] = {}
    for n, s in sets.items():
        urls = {}
        for tool in tools:
            url = cl.url(cl.fresh_db())
            cmd, env, cwd = commands(tool, s, url)
            if timed(cmd, env, cwd)[1] != 0:
                raise SystemExit(f"bench: {tool} failed preparing the no-op case")
            urls[tool] = url
        cases[n] = {t: commands(t, s, urls[t]) for t in tools}
        sg_url = urls["schemagate"]
        cases[n]["schemagate wait --source"] = ([str(SG), "wait", "--source", str(s.digested)], env_with(sg_url), None)
        cases[n]["schemagate wait --expect"] = ([str(SG), "wait", "--expect", s.head], env_with(sg_url), None)
        cases[n]["psql -c 'select 1'"] = ([str(PSQL), "-X", "-q", "-c", "select 1", sg_url], env_with(sg_url), None)
    times = {n: {t: [] for t in c} for n, c in cases.items()}
    for _ in range(runs):
        for n, c in cases.items():
            for name, (cmd, env, cwd) in c.items():
                t, code, _ = timed(cmd, env, cwd)
                if code != 0:
                    raise SystemExit(f"bench: {name} failed its no-op run (exit {code})")
                times[n][name].append(t)
    out = {}
    for n, c in cases.items():
        rss = {name: max(peak_rss_kb(cmd, env, cwd) for _ in range(3)) for name, (cmd, env, cwd) in c.items()}
        out[n] = ({t: median(v) for t, v in times[n].items()}, rss)
    return out


def race_case(cl: Cluster, sets: Sets, tools: list[str], k: int, runs: int) -> dict:
    """K processes of each tool started at once on an empty database, tools taking turns run
    by run: wall time, failures, whether each migration ran once, and the CPU time spent
    per process by the tool (every racer's user + system time) and by the server (the
    back-ends', counted once they have exited)."""
    out: dict[str, dict] = {t: {"failed": [], "wall": [], "exactly_once": True, "client": [], "server": []}
                            for t in tools}
    watch = psycopg.connect(cl.admin, autocommit=True)  # its back-end stays: no exit to count
    keep = cl.children()
    for _ in range(runs):
        for tool in tools:
            url = cl.url(cl.fresh_db())
            cmd, env, cwd = commands(tool, sets, url)
            cl.settle(keep)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            server_before = cl.cpu_ms()
            t = time.perf_counter()
            procs = [subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(k)]
            codes = [p.wait() for p in procs]
            out[tool]["wall"].append(time.perf_counter() - t)
            out[tool]["failed"].append(sum(1 for c in codes if c != 0))
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            out[tool]["client"].append((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000 / k)
            cl.settle(keep)  # the racers' back-ends end just after their clients
            out[tool]["server"].append((cl.cpu_ms() - server_before) / k)
            with psycopg.connect(url.split("?")[0].replace("postgres://", "postgresql://", 1)) as c:
                rows, distinct = c.execute("SELECT count(*), count(DISTINCT version) FROM apply_log").fetchone()
            if not (rows == distinct == sets.n):
                out[tool]["exactly_once"] = False
    watch.close()
    return {
        t: {"failed_max": max(v["failed"]), "failed_median": median(v["failed"]), "wall": median(v["wall"]),
            "exactly_once": v["exactly_once"], "client_ms": median(v["client"]), "server_ms": median(v["server"])}
        for t, v in out.items()
    }


def wait_latency(cl: Cluster, runs: int, listen: bool) -> list[float]:
    url = cl.url(cl.fresh_db())
    plain = url.split("?")[0].replace("postgres://", "postgresql://", 1)
    src = Path(tempfile.mkdtemp()) / "m"
    src.mkdir()
    (src / "1_a.sql").write_text("CREATE TABLE a (id int);")
    subprocess.run([str(SG), "migrate", "--source", str(src)], env=env_with(url), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lat = []
    with psycopg.connect(plain, autocommit=True) as c:
        for i in range(runs):
            version = f"lat-{listen}-{i}"
            cmd = [str(SG), "wait", "--expect", version, "--timeout", "60s", "--interval", "1s"]
            if listen:
                cmd.append("--listen")
            p = subprocess.Popen(cmd, env=env_with(url), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
            # The waiter has made its first check (and LISTENs) once it says it is waiting.
            for line in p.stderr:
                if "waiting for schema version" in line:
                    break
            done = threading.Event()
            t_exit = [0.0]

            def reap() -> None:
                p.wait()
                t_exit[0] = time.perf_counter()
                done.set()

            threading.Thread(target=reap, daemon=True).start()
            c.execute(
                "WITH ins AS (INSERT INTO schemagate_marker (version, status, started_at, runner, tool_version) "
                "VALUES (%s, 'succeeded', now(), 'bench', 'bench') RETURNING version) "
                "SELECT pg_notify('schemagate_marker', version) FROM ins", (version,))
            t_commit = time.perf_counter()
            done.wait(30)
            p.stderr.close()
            lat.append(t_exit[0] - t_commit)
    return lat


def load_case(cl: Cluster, n: int, seconds: float, listen: bool) -> dict:
    url = cl.url(cl.fresh_db())
    dbname = url.split("/")[-1].split("?")[0]
    plain_admin = cl.admin.split("?")[0].replace("postgres://", "postgresql://", 1)
    cmd = [str(SG), "wait", "--expect", "never", "--timeout", "120s"]
    if listen:
        cmd.append("--listen")
    procs = [subprocess.Popen(cmd, env=env_with(url), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(n)]
    time.sleep(3)  # let every waiter start and settle into its interval

    def sample(c):
        return c.execute("SELECT xact_commit + xact_rollback, sessions FROM pg_stat_database WHERE datname = %s",
                         (dbname,)).fetchone()

    with psycopg.connect(plain_admin, autocommit=True) as c:
        c.execute("SELECT pg_stat_clear_snapshot()")
        x0, s0 = sample(c)
        t0 = time.perf_counter()
        peak = 0
        while time.perf_counter() - t0 < seconds:
            peak = max(peak, c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (dbname,)).fetchone()[0])
            time.sleep(0.05)
        c.execute("SELECT pg_stat_clear_snapshot()")
        x1, s1 = sample(c)
        dt = time.perf_counter() - t0
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()
    return {"tx_per_s": (x1 - x0) / dt, "connections_per_s": (s1 - s0) / dt, "peak_connections": peak}


# ----- the report -----

def large_case(cl: Cluster, base: Path, mib: int) -> dict:
    """Peak RSS of each command that reads a source holding one migration of `mib` MiB (many
    INSERT statements, as a data load is), as a ratio to the file's size (issue 20: an init
    container with a 128 MiB limit was OOM-killed; the target is ≤ 2× the file + 16 MiB)."""
    d = base / f"large-{mib}"
    d.mkdir()
    (d / "1_create.sql").write_text("CREATE TABLE big (id serial, v text);\n")
    row = "x" * (256 * 1024 - 64)
    with open(d / "2_fill.sql", "w") as f:
        for i in range(mib * 4):
            f.write(f"INSERT INTO big (v) VALUES ('{i}{row}');\n")
    size = (d / "2_fill.sql").stat().st_size
    env = env_with(cl.url(cl.fresh_db()))
    peaks = {}
    for name, args, e in [
        ("migrate", ["migrate"], env),
        ("migrate, SQLite", ["migrate"], env_with(f"sqlite://{base / f'large-{mib}.db'}")),
        ("wait --source, no digest file", ["wait", "--once"], env),
        ("status --source", ["status"], env),
        ("digest", ["digest"], env),
    ]:
        peaks[name] = peak_rss_kb([str(SG), *args, "--source", str(d)], e, check=True) * 1024
    return {"size": size, "peaks": peaks}


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    mem = int(next(l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))) // 1024 // 1024
    pgv = subprocess.run([str(pg_bin() / "postgres"), "--version"], capture_output=True, text=True).stdout.strip()
    return f"{os.cpu_count()} × {cpu}, {mem} GiB, {platform.system()} {platform.release()}, {pgv}"


def fmt_ms(s: float) -> str:
    return f"{s * 1000:.1f} ms" if s < 10 else f"{s:.1f} s"


def callgrind(cmd: list[str], env: dict) -> int | None:
    """Instructions executed by `cmd` (every thread), from valgrind's callgrind: stable where
    wall time on a shared machine is not. None without valgrind."""
    if not shutil.which("valgrind"):
        return None
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "cg.out"
        p = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd], env=env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            raise SystemExit(f"bench: {' '.join(cmd)} failed under callgrind:\n{p.stderr}")
        for line in p.stderr.splitlines():
            if "Collected :" in line:
                return int(line.split(":")[-1].strip())
    return None


def instructions(cl: Cluster, sets: dict, n_small: int, n_big: int, before: str | None) -> dict:
    """callgrind counts of the no-op `migrate` at two sizes, with and without a digest file,
    and with `before` (an earlier build, `--before`) on the digest file's source."""
    out = {}
    for n in (n_small, n_big):
        url = cl.url(cl.fresh_db())
        cmd, env, _ = commands("schemagate", sets[n], url)
        if timed(cmd, env)[1] != 0:
            raise SystemExit("bench: schemagate failed preparing the callgrind case")
        for tool in ("schemagate", "schemagate, no digest file"):
            cmd, env, _ = commands(tool, sets[n], url)
            out[(tool, n)] = callgrind(cmd, env)
        if before:
            out[("before", n)] = callgrind([before, "migrate", "--source", str(sets[n].digested)], env_with(url))
    return out


CHARTS = ROOT / "bench/charts"


def charts(sizes, applied, apply_tools, noop, noop_rows, races) -> list[str]:
    """PNG charts beside the report; the Markdown lines that embed them. Empty without
    matplotlib (bench/run installs it for the full run)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    CHARTS.mkdir(parents=True, exist_ok=True)
    # schemagate in black, thick; the rest in matplotlib's cycle (psql dashed).
    style = {"schemagate": dict(color="black", linewidth=2.5, marker="o")}

    def draw(name: str, title: str, build) -> str:
        fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
        build(ax)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        fig.tight_layout()
        fig.savefig(CHARTS / name)
        plt.close(fig)
        return f"![{title}](bench/charts/{name})"

    def apply_chart(ax):
        for tool in apply_tools:
            ax.plot(sizes, [applied[n][tool] * 1000 for n in sizes], label=tool,
                    **style.get(tool, dict(marker=".", linestyle="--" if tool.startswith("psql") else "-")))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N migrations applied (each a table and an index)")
        ax.set_ylabel("wall time, ms (log)")

    def race_chart(ax):
        ks = sorted(races)
        tools = list(races[ks[0]])
        ax2 = ax.twinx()
        for i, tool in enumerate(tools):
            st = style.get(tool, dict(marker="."))
            (line,) = ax.plot(ks, [races[k][tool]["wall"] * 1000 for k in ks], label=f"{tool} wall", **st)
            ax2.bar([k + (i - len(tools) / 2) * 0.8 for k in ks], [races[k][tool]["failed_max"] for k in ks],
                    width=0.8, alpha=0.35, color=line.get_color())
        ax.set_yscale("log")
        ax.set_xlabel("K processes racing (20 migrations)")
        ax.set_ylabel("wall time, ms (log; lines)")
        ax2.set_ylabel("failed processes, worst run (bars)")
        ax.set_xticks(ks)

    def noop_chart(ax):
        ns = sorted(noop)
        for tool in noop_rows:
            ax.plot(ns, [noop[n][0][tool] * 1000 for n in ns], label=tool,
                    **style.get(tool, dict(marker=".", linestyle="--" if tool.startswith("psql") else "-")))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N migrations in the directory (all applied)")
        ax.set_ylabel("wall time of one no-op run, ms (log)")

    return [
        draw("apply.png", "Applying N migrations to an empty database", apply_chart),
        draw("race.png", "K processes racing on an empty database", race_chart),
        draw("noop.png", "The no-op run every replica pays at start", noop_chart),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="short form, no peers, writes nothing")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--load", default="", help="what else ran on the machine meanwhile (for the report)")
    ap.add_argument("--before", default=None,
                    help="an earlier schemagate build whose no-op instructions to count beside this one's")
    args = ap.parse_args()
    smoke = args.smoke
    runs = args.runs or (3 if smoke else 9)
    peers = [] if smoke else ["sqlx library", "sqlx-cli", "dbmate", "alembic"]
    cl = Cluster()
    base = Path(tempfile.mkdtemp(prefix="schemagate-bench-src-"))
    lines: list[str] = []
    say = lines.append
    load_before = os.getloadavg()
    try:
        sizes = [1, 20] if smoke else [1, 100, 500]
        sets = {n: Sets(base, n) for n in sizes}
        apply_tools = ["schemagate", "schemagate 1tx", *peers, "psql 1tx", "psql autocommit", "psql autocommit, async"]
        applied = {}
        for n in sizes:
            applied[n] = apply_case(cl, sets[n], apply_tools, max(3, runs // 2) if n >= 500 else runs)
            print(f"apply {n}: " + ", ".join(f"{t} {fmt_ms(v)}" for t, v in applied[n].items()), flush=True)
        noop = noop_case(cl, {n: sets[n] for n in sizes}, ["schemagate", "schemagate, no digest file", *peers],
                         runs * 2 if not smoke else runs)
        for n in sizes:
            print(f"no-op {n}: " + ", ".join(f"{t} {fmt_ms(v)}" for t, v in noop[n][0].items()), flush=True)
        counts = {} if smoke else instructions(cl, sets, sizes[0], sizes[-1], args.before)
        print(f"callgrind: {counts}", flush=True)
        race_sets = Sets(base / "race", 20, body=logged_sql, prologue="CREATE TABLE apply_log (version int);\n")
        races = {}
        for k in ([5] if smoke else [10, 25, 50]):
            races[k] = race_case(cl, race_sets, ["schemagate", *peers], k, 2 if smoke else 5)
            print(f"race {k}: {races[k]}", flush=True)
        lat_runs = 5 if smoke else 50
        lat_listen = wait_latency(cl, lat_runs, listen=True)
        lat_poll = wait_latency(cl, lat_runs, listen=False)
        print(f"wait --listen p50 {fmt_ms(pct(lat_listen, 50))} p99 {fmt_ms(pct(lat_listen, 99))}; "
              f"poll p50 {fmt_ms(pct(lat_poll, 50))}", flush=True)
        load = {mode: load_case(cl, 20 if smoke else 100, 3 if smoke else 10, mode == "listen") for mode in ("poll", "listen")}
        print(f"load of waiters: {load}", flush=True)
        large = large_case(cl, base, 16 if smoke else 200)
        round_trips = {
            mode: subprocess.run([str(ROOT / "bench/roundtrips"), "--url", cl.admin, "--bin", str(SG),
                                  "-n", "20" if smoke else "200", *flags],
                                 check=True, capture_output=True, text=True).stdout.strip()
            for mode, flags in (("one transaction per migration", []),
                                ("--single-transaction", ["--single-transaction"]))
        }
        print("round trips:\n" + "\n".join(round_trips.values()), flush=True)
        print("peak RSS / file size, one migration of {:.0f} MiB: ".format(large["size"] / 1048576)
              + ", ".join(f"{t} {v / large['size']:.2f}×" for t, v in large["peaks"].items()), flush=True)
    finally:
        cl.stop()
        shutil.rmtree(base, ignore_errors=True)
    load_after = os.getloadavg()

    size = SG.stat().st_size
    static = ROOT / "target/static/schemagate"
    static_size = static.stat().st_size if static.exists() else None
    if smoke:
        print(f"bench smoke done: binary {size} bytes")
        return

    big = sizes[-1]
    floor = noop[big][0]["psql -c 'select 1'"]
    noop_rows = ["schemagate", "schemagate, no digest file", "schemagate wait --source", "schemagate wait --expect",
                 *peers, "psql -c 'select 1'"]
    pictures = charts(sizes, applied, apply_tools, noop, noop_rows, races)
    say("# Benchmarks\n")
    say(f"Measured by `bench/run` on {time.strftime('%Y-%m-%d')}: {machine()}. A throwaway cluster "
        "(default settings but `autovacuum` off, `fsync` on, plain TCP on loopback) served nothing else. Tools took turns run by run; "
        f"figures are medians of {runs} runs (N = 500 applies: {max(3, runs // 2)}; races: 5), latencies p50/p99. "
        f"Load average (1 min) {load_before[0]:.1f} before the run and {load_after[0]:.1f} after"
        + (f": {args.load}" if args.load else "")
        + ". Peers: sqlx 0.9.0 as a library (its `Migrator`, locking on: `bench/sqlx-lib`, built with the same "
        "patched sqlx-core (TCP_NODELAY) and sqlx-postgres that schemagate vendors under `vendor/`, so the ratios "
        "compare tools, not socket options), sqlx-cli 0.9.0 (crates.io, unpatched), "
        "dbmate 2.36.0 (npm), alembic 1.18.4 with psycopg 3 (PyPI). "
        "The floor is PostgreSQL's own `psql` binary (not Debian's wrapper script).\n")
    say("Reproduce: `bench/run` (installs the peers and matplotlib under `target/`, ~5 min the first time; "
        "the run itself takes about ten minutes). CI runs `bench/run --smoke`. "
        "`schemagate` rows (and `wait --source`) use a source with the digest file an image build writes "
        "(`schemagate digest`); `schemagate, no digest file` the same directory without it."
        + (f" The earlier build's callgrind counts: `bench/run --before {args.before}`." if args.before else "")
        + "\n")
    sg_noop = noop[big][0]["schemagate"]
    sg_wait = noop[big][0]["schemagate wait --source"]
    say("Wall-time ratios move with the load on this machine's 2 shared cores (the load average is above); "
        "the callgrind counts below do not, and measure the no-op path's own work.\n")
    say("### Issue 16: before and after\n")
    say("| measure | before issue 16 (BENCHMARKS.md of 2026-11-25, quiet machine) | the previous run "
        "(2026-11-26, `1a20cc5`, load average 5 to 8) | this run | target |\n| --- | --- | --- | --- | --- |")
    this = {
        "race": races[50]["schemagate"]["wall"] / races[50]["sqlx library"]["wall"],
        "apply": applied[big]["schemagate"] / applied[big]["psql autocommit"],
        "noop_floor": sg_noop / floor,
        "flat": sg_noop / noop[sizes[0]][0]["schemagate"],
    }
    for key, name, target in [
        ("race", "K = 50 racing, wall, schemagate / sqlx's locked library", "≤ 0.9×"),
        ("apply", f"apply {big}, schemagate / psql autocommit floor", "≤ 1.05×"),
        ("noop_floor", f"no-op `migrate --source`, N = {big}, / `psql -c 'select 1'`", "≤ 1.0×"),
        ("flat", f"no-op N = {big} / N = {sizes[0]}, wall", "≤ 1.1×"),
    ]:
        say(f"| {name} | {ISSUE16[key][0]} | {ISSUE16[key][1]} | {this[key]:.2f}× | {target} |")
    if counts.get(("schemagate", big)):
        a, b = counts[("schemagate", sizes[0])], counts[("schemagate", big)]
        cell = f"{b:,} / {a:,} = {b / a:.2f}×"
        if counts.get(("before", big)):
            a0, b0 = counts[("before", sizes[0])], counts[("before", big)]
            cell += f" (the build this part started from, `--before`, in this run: {b0:,} / {a0:,} = {b0 / a0:.2f}×)"
        say(f"| no-op N = {big} / N = {sizes[0]}, callgrind instructions | {ISSUE16['callgrind'][0]} | "
            f"{ISSUE16['callgrind'][1]} | {cell} | — |")
    say("")
    say("\n\n".join(pictures) + "\n" if pictures else "")
    say("## Targets\n")
    rows = [
        ("no-op `migrate`, N = 500, / `select 1` floor", sg_noop / floor, "≤ 1.0×"),
        ("no-op `migrate`, N = 500 / N = 1 (flat in N)", sg_noop / noop[sizes[0]][0]["schemagate"], "≤ 1.1×"),
        ("no-op `migrate`, no digest file, N = 500 / N = 1",
         noop[big][0]["schemagate, no digest file"] / noop[sizes[0]][0]["schemagate, no digest file"], "—"),
        ("ready `wait --source`, N = 500, / `select 1` floor", sg_wait / floor, "≤ 1.0×"),
        ("ready `wait --expect`, / `select 1` floor", noop[big][0]["schemagate wait --expect"] / floor, "≤ 1.0×"),
        ("apply 500, `schemagate` / `psql` autocommit floor", applied[big]["schemagate"] / applied[big]["psql autocommit"], "≤ 1.05×"),
        ("apply 500, `schemagate --single-transaction` / `psql -1` floor", applied[big]["schemagate 1tx"] / applied[big]["psql 1tx"], "≤ 1.1×"),
        ("K = 50 racing, wall time, schemagate / sqlx's locked library run", races[50]["schemagate"]["wall"] / races[50]["sqlx library"]["wall"], "≤ 0.9×"),
    ]
    say("| measure | ratio | target |\n| --- | --- | --- |")
    for name, ratio, target in rows:
        say(f"| {name} | {ratio:.2f}× | {target} |")
    say(f"| K = 50 racing: schemagate failures | {races[50]['schemagate']['failed_max']} | 0 |")
    say(f"| `wait --listen` wake, p50 / p99 | {fmt_ms(pct(lat_listen, 50))} / {fmt_ms(pct(lat_listen, 99))} | ≤ 10 ms / ≤ 50 ms |")
    say(f"| peak RSS, no-op `migrate` | {noop[big][1]['schemagate'] / 1024:.1f} MiB | ≤ 8 MiB |")
    mib = large["size"] / 1048576
    for tool, peak in large["peaks"].items():
        say(f"| peak RSS / file size, `{tool}` of one {mib:.0f} MiB migration | {peak / large['size']:.2f}× "
            f"({peak / 1048576:.0f} MiB) | ≤ 2× + 16 MiB |")
    size_text = f"{static_size / 1048576:.2f} MiB static (musl)" if static_size else f"{size / 1048576:.2f} MiB (glibc)"
    say(f"| binary size | {size_text} | ≤ 6 MiB |")
    say("")
    if any(v is not None for v in counts.values()):
        say("## Instructions of the no-op run (callgrind)\n")
        say("User-space instructions of one no-op `migrate --source` (every thread), from "
            "`valgrind --tool=callgrind`: steady where wall time on a shared machine is not.\n")
        say(f"| source | N = {sizes[0]} | N = {big} | N = {big} / N = {sizes[0]} |\n| --- | --- | --- | --- |")
        for tool in ("schemagate", "schemagate, no digest file", "before"):
            if counts.get((tool, big)) is None:
                continue
            a, b = counts[(tool, sizes[0])], counts[(tool, big)]
            label = {"schemagate": "with the digest file", "schemagate, no digest file": "without a digest file",
                     "before": "with the digest file, the build this part started from (`--before`)"}[tool]
            say(f"| {label} | {a:,} | {b:,} | {b / a:.2f}× |")
        say("")
    say("## Applying N migrations to an empty database (each a table and an index)\n")
    say("| tool | " + " | ".join(f"N = {n}" for n in sizes) + f" | × psql autocommit (N = {big}) |")
    say("| --- | " + " | ".join("---" for _ in sizes) + " | --- |")
    for tool in apply_tools:
        say(f"| {tool} | " + " | ".join(fmt_ms(applied[n][tool]) for n in sizes)
            + f" | {applied[big][tool] / applied[big]['psql autocommit']:.2f}× |")
    say("")
    say("`psql autocommit, async` is the same file with `synchronous_commit = off`: what skipping one WAL flush per "
        "migration could save on this disk. `schemagate --single-transaction` removes those flushes safely instead.\n")
    say("## The no-op run every replica pays at start (already up to date)\n")
    ns = sorted(noop)
    say("| tool | " + " | ".join(f"N = {n}" for n in ns) + f" | × schemagate (N = {big}) | peak RSS |")
    say("| --- | " + " | ".join("---" for _ in ns) + " | --- | --- |")
    for tool in noop_rows:
        say(f"| {tool} | " + " | ".join(fmt_ms(noop[n][0][tool]) for n in ns)
            + f" | {noop[big][0][tool] / sg_noop:.2f}× | {noop[big][1][tool] / 1024:.1f} MiB |")
    say("")
    say("## K processes racing on an empty database (20 migrations, each logging itself once)\n")
    say("CPU per racer: the tool's own (user + system time of each process) and the server's (its back-end, "
        "with the postmaster's fork of it), medians over the runs. On 2 cores the racers, their back-ends and "
        "the launcher share the CPU, so the wall time follows the sum. The kernel accounts CPU time in "
        "ticks of 10 ms, and most back-ends live less than one, so the server column is coarse (whole "
        "ticks over K racers).\n")
    say("| tool | K | failed processes (median / worst run) | each migration exactly once | wall time | × schemagate "
        "| CPU per racer: tool / server |")
    say("| --- | --- | --- | --- | --- | --- | --- |")
    for k, r in races.items():
        for tool, v in r.items():
            say(f"| {tool} | {k} | {v['failed_median']:.0f} / {v['failed_max']} | {'yes' if v['exactly_once'] else 'no'} | "
                f"{fmt_ms(v['wall'])} | {v['wall'] / r['schemagate']['wall']:.2f}× | "
                f"{v['client_ms']:.1f} ms / {v['server_ms']:.1f} ms |")
    say("")
    say("## `wait` latency, marker commit to process exit\n")
    say(f"| mode | runs | p50 | p99 |\n| --- | --- | --- | --- |")
    say(f"| `--listen` | {len(lat_listen)} | {fmt_ms(pct(lat_listen, 50))} | {fmt_ms(pct(lat_listen, 99))} |")
    say(f"| polling, `--interval 1s` (jittered) | {len(lat_poll)} | {fmt_ms(pct(lat_poll, 50))} | {fmt_ms(pct(lat_poll, 99))} |")
    say("")
    say("## Database load of 100 waiting processes\n")
    say("| mode | transactions/s | new connections/s | connections held (peak) |\n| --- | --- | --- | --- |")
    for mode, v in load.items():
        say(f"| {mode} | {v['tx_per_s']:.0f} | {v['connections_per_s']:.0f} | {v['peak_connections']} |")
    say("")
    say("## Round trips per migration\n")
    say("`bench/roundtrips` runs `migrate --source` through a loopback proxy that counts the bursts schemagate "
        "sends after a reply from the server (each one something it waits for), over every connection of the run: "
        "1 + N migrations to an empty database, minus the same run with 1, divided by N. The count does not move "
        "with the machine's load; the load average it prints is the one when it ran.\n")
    for mode, out in round_trips.items():
        say(f"{mode}:\n\n```\n{out}\n```\n")
    say(PROBE)
    say(NOTES)
    # Measured by `schemagate smoke --rolling`, not by this run: kept as the file has it.
    previous = Path(args.out).read_text() if Path(args.out).exists() else ""
    if (at := previous.find(ROLLING)) >= 0:
        say(previous[at:].rstrip("\n"))
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

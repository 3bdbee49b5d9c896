//! RELIABILITY.md is generated from the test suite: every fault and bad input a test
//! reproduces carries a `/// reliability: fault | what schemagate did | what was lost`
//! line (optionally `| backends`, or `/// reliability (SQLite): …`, when they are not those
//! of the file), and this test rebuilds the table from those lines. It fails when the file
//! is out of date; `SCHEMAGATE_BLESS=1 cargo test --test it reliability_doc` rewrites it.

use std::path::Path;

struct Row {
    fault: String,
    did: String,
    lost: String,
    backends: String,
    test: String,
}

fn backends_of(file: &str) -> &'static str {
    match file {
        "backends.rs" | "phases.rs" => "PostgreSQL, MariaDB, SQLite",
        "mysql.rs" => "MariaDB",
        _ => "PostgreSQL",
    }
}

fn rows() -> Vec<Row> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    let mut rows = Vec::new();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            // `/// reliability: …`, or `/// reliability (Backend, …): …` when the test runs
            // on fewer backends than its file does.
            let Some(rest) = line.trim_start().strip_prefix("/// reliability") else {
                continue;
            };
            let (only, spec) = match rest.strip_prefix(" (") {
                Some(r) => {
                    let (b, spec) = r.split_once("): ").expect("`/// reliability (…): …`");
                    (Some(b.to_owned()), spec)
                }
                None => match rest.strip_prefix(": ") {
                    Some(spec) => (None, spec),
                    None => continue,
                },
            };
            let parts: Vec<&str> = spec.split(" | ").collect();
            assert!(
                matches!(parts.len(), 3 | 4),
                "{file}:{}: expected `fault | what it did | lost` (and optionally `| backends`)",
                i + 1
            );
            let name = lines[i + 1..]
                .iter()
                .find_map(|l| {
                    l.trim_start()
                        .strip_prefix("fn ")
                        .map(|f| f.split('(').next().unwrap().to_owned())
                })
                .unwrap_or_else(|| {
                    panic!(
                        "{file}:{}: no test function after the reliability line",
                        i + 1
                    )
                });
            rows.push(Row {
                fault: parts[0].to_owned(),
                did: parts[1].to_owned(),
                lost: parts[2].to_owned(),
                backends: only
                    .or_else(|| parts.get(3).map(|b| (*b).to_owned()))
                    .unwrap_or_else(|| backends_of(&file).to_owned()),
                test: format!("tests/it/{file}: `{name}`"),
            });
        }
    }
    rows
}

fn render(rows: &[Row]) -> String {
    let mut out = String::from(
        "# Reliability\n\n\
         Every fault and bad input the test suite reproduces on real databases, what schemagate\n\
         did, and what was lost. Generated from the tests' `/// reliability:` lines by\n\
         `tests/reliability_doc.rs`, so each row is asserted by the test it names; do not edit by\n\
         hand (`SCHEMAGATE_BLESS=1 cargo test --test it reliability_doc` regenerates it).\n\n\
         | fault or bad input | backends | what schemagate did | lost | test |\n\
         | --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.fault, r.backends, r.did, r.lost, r.test
        ));
    }
    out.push_str(ROLLING);
    out
}

/// The one section not generated from the tests: the long rehearsal the `smoke_rolling_*`
/// tests run five updates of, measured by hand.
const ROLLING: &str = "\n## 100 rolling updates\n\n\
    `schemagate smoke --rolling --updates 100` on PostgreSQL 15 (2026-12-03, load average 10.5 \
    at the end; method in docs/src/phases.md, full table in BENCHMARKS.md): 108 SIGTERM, 102 \
    SIGKILL and 90 partitions of old instances, 50 new instances SIGKILLed, 20 updates \
    skipping a release. 0 contracts started while an app of an older release was alive; \
    contracts started a median 1.4 s, at most 4.0 s, after the last old app ended; 20 N -> \
    N+2 updates completed, 0 failed; every migration applied; 0 unaccepted `check` findings \
    in the expands. 85 of 90 partitioned apps were seen gone before their row expired, 5 \
    after it (up to 0.76 s, with a 3 s TTL whose fence leaves 0.6 s, at that load): the run \
    exited 1.\n";

#[test]
fn reliability_md_is_generated_from_the_tests() {
    let rows = rows();
    assert!(
        rows.len() >= 20,
        "only {} reliability rows found",
        rows.len()
    );
    let expected = render(&rows);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("RELIABILITY.md");
    if std::env::var_os("SCHEMAGATE_BLESS").is_some() {
        std::fs::write(&path, &expected).unwrap();
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "RELIABILITY.md is out of date with the tests' `/// reliability:` lines; regenerate it \
         with `SCHEMAGATE_BLESS=1 cargo test --test it reliability_doc`"
    );
}

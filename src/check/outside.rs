//! Statements that act outside the database a migration runs in: on another database (the
//! real one, named in `ALTER DATABASE app SET …`), on the whole server (roles, tablespaces,
//! `ALTER SYSTEM`, replication slots, other sessions) or beyond it (`dblink`, `COPY …
//! PROGRAM`, server files). A rehearsal on a scratch database cannot contain them: run
//! there, they would change what the scratch database was meant to protect. `check` finds
//! them here, by their words, before anything runs, reports each one as an
//! `outside-database` finding and leaves it out of the rehearsal.
//!
//! Found also inside `DO` blocks and dynamic SQL strings (`EXECUTE 'CREATE ROLE …'`), which
//! run when the migration does; not inside `CREATE FUNCTION` / `PROCEDURE` / `RULE`
//! bodies, which only run when called (whatever escapes that way is caught by the
//! before-and-after comparison of the real database, `guard.rs`).

use sqlx::migrate::Migration;
use sqlx::{AssertSqlSafe, SqlSafeStr};

use super::MigrationReport;
use crate::sql;

/// The finding kind, as an allow comment names it.
pub const KIND: &str = "outside-database";

/// One statement of a migration that acts outside its database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outside {
    /// Its position among the migration's statements (`sql::split`), from 0.
    pub index: usize,
    pub line: usize,
    /// What it acts on: `database app`, `role readonly`, `tablespace fast`, `system`,
    /// `dblink_exec`, `program`, ...
    pub objects: Vec<String>,
    /// The statement, on one line and cut short, for the finding's detail.
    pub excerpt: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// An unquoted word, upper-cased, and as written.
    Word(String, String),
    /// A `"quoted"` identifier, unquoted.
    Quoted(String),
    /// Any other character; `'` and `$` mark where a string literal opens or closes
    /// (their contents are read as code: a `DO` body or an `EXECUTE` string runs).
    Punct(char),
}

/// The statements of `sql` that act outside the database they run in. On MySQL every
/// GRANT and REVOKE does (privileges live in the server's `mysql` schema, and outlive a
/// dropped database).
pub fn find(sql: &str, mysql: bool) -> Vec<Outside> {
    sql::split(sql)
        .into_iter()
        .enumerate()
        .filter_map(|(index, st)| {
            let objects = classify(st.text, mysql);
            (!objects.is_empty()).then(|| Outside {
                index,
                line: st.line,
                objects,
                excerpt: excerpt(st.text),
            })
        })
        .collect()
}

impl Outside {
    /// The statements of migration `m` that act outside its database, each logged and
    /// remembered in `skipped` (for `hint`): the rehearsal leaves them out.
    pub fn find(m: &Migration, mysql: bool, skipped: &mut Vec<String>) -> Vec<Outside> {
        let found = find(m.sql.as_str(), mysql);
        for o in &found {
            tracing::warn!(
                "not rehearsing statement {} of migration {} (line {}): `{}` acts outside the \
                 scratch database ({})",
                o.index + 1,
                m.version,
                o.line,
                o.excerpt,
                o.objects.join(", ")
            );
            skipped.push(format!("`{}` in {}", o.excerpt, m.version));
        }
        found
    }
}

/// `m` without the statements in `outside` (the rehearsal never runs them); its checksum
/// stays the file's, as `migrate` records it.
pub fn runnable(m: &Migration, outside: &[Outside]) -> Migration {
    if outside.is_empty() {
        return m.clone();
    }
    Migration {
        sql: AssertSqlSafe(without(m.sql.as_str(), outside)).into_sql_str(),
        ..m.clone()
    }
}

/// What a failure may owe to the statements left out so far, in words (empty: none).
pub fn hint(skipped: &[String]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    format!(
        " (check did not run {} statement(s) that act outside the scratch database, which \
         this may depend on: {}; create what they create on the check's server first)",
        skipped.len(),
        super::guard::list(skipped, 3)
    )
}

/// One `outside-database` finding per object each statement acts on.
pub fn report(report: &mut MigrationReport, outside: &[Outside], allowed: &[(String, String)]) {
    for o in outside {
        for object in &o.objects {
            report.add(
                KIND,
                object.clone(),
                format!(
                    "statement {} (line {}) `{}` acts outside the database it migrates: not \
                     rehearsed (check never changes anything beyond its scratch database); \
                     migrate will run it on the real server",
                    o.index + 1,
                    o.line,
                    o.excerpt
                ),
                allowed,
            );
        }
    }
}

/// `sql` without the statements `skip` names (by index), as the rehearsal runs it.
pub fn without(sql: &str, skip: &[Outside]) -> String {
    sql::split(sql)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !skip.iter().any(|o| o.index == *i))
        // A newline before each `;`: a statement may end in a `--` comment.
        .map(|(_, st)| format!("{}\n;\n", st.text))
        .collect()
}

/// The statement on one line, at most 80 characters, any password masked (a `dblink`
/// connection string may hold one).
fn excerpt(text: &str) -> String {
    let one_line = crate::redact::redact(&text.split_whitespace().collect::<Vec<_>>().join(" "));
    match one_line.char_indices().nth(80) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

/// What one statement acts on outside its database (empty: nothing). Long on purpose: one
/// short rule per kind of statement, in the order the module comment lists them.
fn classify(text: &str, mysql: bool) -> Vec<String> {
    let t = tokens(text);
    let word = |i: usize| match t.get(i) {
        Some(Token::Word(w, _)) => Some(w.as_str()),
        _ => None,
    };
    // Bodies that run only when called.
    let mut first = 0;
    if word(0) == Some("CREATE") {
        first = if word(1) == Some("OR") && word(2) == Some("REPLACE") {
            3
        } else {
            1
        };
    }
    if first > 0 && matches!(word(first), Some("FUNCTION" | "PROCEDURE" | "RULE")) {
        return Vec::new();
    }
    let mut out: Vec<String> = Vec::new();
    let mut push = |o: String| {
        if !out.contains(&o) {
            out.push(o);
        }
    };
    for i in 0..t.len() {
        let Some(w) = word(i) else { continue };
        let prev = i.checked_sub(1).and_then(word);
        // `CREATE|ALTER|DROP <kind>` opening a statement (not `ALTER TABLE t DROP role`,
        // a column named role).
        let creates = matches!(prev, Some("CREATE" | "ALTER" | "DROP"))
            && statement_start(&t, i - 1) == i - 1;
        let on_database = prev == Some("ON")
            && matches!(
                word(statement_start(&t, i)),
                Some("GRANT" | "REVOKE" | "COMMENT" | "SECURITY")
            );
        match w {
            // ALTER / CREATE / DROP DATABASE x; COMMENT ON, GRANT … ON, SECURITY LABEL ON
            // DATABASE x.
            "DATABASE" if creates || on_database => {
                push(format!("database {}", name_after(&t, i + 1)))
            }
            "ROLE" | "USER" | "GROUP" if creates && word(i + 1) != Some("MAPPING") => {
                push(format!("role {}", name_after(&t, i + 1)))
            }
            "TABLESPACE" if creates => push(format!("tablespace {}", name_after(&t, i + 1))),
            "SUBSCRIPTION" if creates => push(format!("subscription {}", name_after(&t, i + 1))),
            "SYSTEM" if prev == Some("ALTER") => push("system".into()),
            // MySQL: server variables, and files on the server.
            "GLOBAL" | "PERSIST" | "PERSIST_ONLY"
                if prev == Some("SET") && statement_start(&t, i - 1) == i - 1 =>
            {
                push("system".into())
            }
            "OUTFILE" | "DUMPFILE" if prev == Some("INTO") => push("server-file".into()),
            // SQLite: another database file.
            "ATTACH" if statement_start(&t, i) == i => push("attached database".into()),
            // Shared objects (databases, tablespaces) change owner too.
            "OWNED" if prev == Some("REASSIGN") && word(i + 1) == Some("BY") => {
                push(format!("role {}", name_after(&t, i + 2)))
            }
            "COPY" => {
                let rest = &t[i + 1..];
                if rest
                    .iter()
                    .any(|x| matches!(x, Token::Word(w, _) if w == "PROGRAM"))
                {
                    push("program".into());
                } else if rest.windows(2).any(|p| {
                    matches!(&p[0], Token::Word(w, _) if w == "TO") && p[1] == Token::Punct('\'')
                }) {
                    push("server-file".into());
                }
            }
            _ if t.get(i + 1) == Some(&Token::Punct('(')) && reaches_out(w) => {
                push(w.to_ascii_lowercase())
            }
            _ => {}
        }
    }
    // GRANT role TO role / REVOKE role FROM role (membership, server-wide); with ON it
    // grants privileges on this database's objects.
    let grant = matches!(word(0), Some("GRANT" | "REVOKE"));
    let at = |kw: &str| (0..t.len()).find(|&i| word(i) == Some(kw));
    if grant && at("ON").is_none() {
        let mut i = 1;
        if word(0) == Some("REVOKE") && matches!(word(1), Some("ADMIN" | "INHERIT" | "SET")) {
            i = 4; // REVOKE ADMIN OPTION FOR r
        }
        push(format!("role {}", name_after(&t, i)));
    } else if grant && mysql {
        // The grantee: after TO (GRANT) or FROM (REVOKE).
        let to = if word(0) == Some("GRANT") {
            "TO"
        } else {
            "FROM"
        };
        if let Some(i) = at(to) {
            push(format!("role {}", name_after(&t, i + 1)));
        }
    }
    out
}

/// Where the (sub)statement holding token `i` starts: after a `;`, a quote (a `DO` body or
/// an `EXECUTE` string opens) or a PL/pgSQL word that a statement follows.
fn statement_start(t: &[Token], i: usize) -> usize {
    (0..i)
        .rev()
        .find(|&j| match &t[j] {
            Token::Punct(c) => matches!(c, ';' | '\'' | '$'),
            Token::Word(w, _) => {
                matches!(w.as_str(), "BEGIN" | "THEN" | "ELSE" | "LOOP" | "EXECUTE")
            }
            Token::Quoted(_) => false,
        })
        .map_or(0, |j| j + 1)
}

/// Functions whose call reaches another database, other sessions or the server's files.
fn reaches_out(upper: &str) -> bool {
    upper.starts_with("DBLINK")
        || matches!(
            upper,
            "PG_TERMINATE_BACKEND"
                | "PG_CANCEL_BACKEND"
                | "PG_RELOAD_CONF"
                | "PG_ROTATE_LOGFILE"
                | "PG_PROMOTE"
                | "LO_EXPORT"
                | "PG_FILE_WRITE"
                | "PG_FILE_RENAME"
                | "PG_FILE_UNLINK"
                | "PG_CREATE_LOGICAL_REPLICATION_SLOT"
                | "PG_CREATE_PHYSICAL_REPLICATION_SLOT"
                | "PG_DROP_REPLICATION_SLOT"
                | "PG_REPLICATION_ORIGIN_CREATE"
                | "PG_REPLICATION_ORIGIN_DROP"
        )
}

/// The object name at `i` (after `IF [NOT] EXISTS`): lower-cased unless quoted, and
/// `(dynamic)` when the statement builds it (`' || current_database() || '`).
fn name_after(t: &[Token], mut i: usize) -> String {
    let is = |i: usize, w: &str| matches!(t.get(i), Some(Token::Word(x, _)) if x == w);
    if is(i, "IF") {
        i += if is(i + 1, "NOT") { 3 } else { 2 };
    }
    match t.get(i) {
        Some(Token::Word(_, raw)) => raw.to_ascii_lowercase(),
        Some(Token::Quoted(q)) => q.clone(),
        // MySQL quotes names: 'bob'@'%', `app`.
        Some(Token::Punct(q @ ('\'' | '`'))) => match (t.get(i + 1), t.get(i + 2)) {
            (Some(Token::Word(_, raw)), Some(Token::Punct(end))) if end == q => raw.clone(),
            _ => "(dynamic)".into(),
        },
        _ => "(dynamic)".into(),
    }
}

/// Words, quoted identifiers and punctuation, without comments; the contents of string
/// literals are read as code (a `DO` block's body is one).
fn tokens(text: &str) -> Vec<Token> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            i = text[i..].find('\n').map_or(b.len(), |n| i + n + 1);
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i = text[i + 2..].find("*/").map_or(b.len(), |n| i + n + 4);
        } else if c == b'"' {
            let end = text[i + 1..].find('"').map_or(b.len(), |n| i + 1 + n);
            out.push(Token::Quoted(text[i + 1..end].to_owned()));
            i = end + 1;
        } else if c == b'$' {
            // `$tag$` (or `$$`, or a parameter `$1`): one mark.
            let end = text[i + 1..]
                .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                .map_or(b.len(), |n| i + 1 + n);
            out.push(Token::Punct('$'));
            i = if b.get(end) == Some(&b'$') {
                end + 1
            } else {
                end
            };
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            let end = text[i..]
                .find(|ch: char| !(ch.is_alphanumeric() || ch == '_' || ch == '$'))
                .map_or(b.len(), |n| i + n);
            let raw = &text[i..end];
            out.push(Token::Word(raw.to_ascii_uppercase(), raw.to_owned()));
            i = end;
        } else if c.is_ascii_whitespace() || c.is_ascii_digit() {
            i += 1;
        } else {
            let ch = text[i..].chars().next().unwrap_or(' ');
            out.push(Token::Punct(ch));
            i += ch.len_utf8();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(sql: &str) -> Vec<String> {
        find(sql, false)
            .into_iter()
            .flat_map(|o| o.objects)
            .collect()
    }

    #[test]
    fn every_grant_is_server_wide_on_mysql() {
        let mysql = |sql| -> Vec<String> {
            find(sql, true)
                .into_iter()
                .flat_map(|o| o.objects)
                .collect()
        };
        assert_eq!(mysql("GRANT SELECT ON app.* TO 'bob'@'%'"), ["role bob"]);
        assert_eq!(mysql("REVOKE INSERT ON t FROM bob"), ["role bob"]);
        assert!(objects("GRANT SELECT ON t TO bob").is_empty());
    }

    #[test]
    fn statements_on_other_databases_and_the_server_are_found() {
        assert_eq!(
            objects("ALTER DATABASE app SET lock_timeout = '5s'"),
            ["database app"]
        );
        assert_eq!(
            objects("COMMENT ON DATABASE \"App\" IS 'x'"),
            ["database App"]
        );
        assert_eq!(
            objects("GRANT CONNECT ON DATABASE app TO readonly"),
            ["database app"]
        );
        assert_eq!(
            objects("CREATE ROLE readonly; CREATE USER bob; DROP ROLE IF EXISTS x"),
            ["role readonly", "role bob", "role x"]
        );
        assert_eq!(objects("GRANT readonly TO bob"), ["role readonly"]);
        assert_eq!(objects("REVOKE readonly FROM bob"), ["role readonly"]);
        assert_eq!(objects("ALTER SYSTEM SET work_mem = '1GB'"), ["system"]);
        assert_eq!(
            objects("CREATE TABLESPACE fast LOCATION '/x'"),
            ["tablespace fast"]
        );
        assert_eq!(
            objects("SELECT dblink_exec('dbname=app', 'DROP TABLE t')"),
            ["dblink_exec"]
        );
        assert_eq!(
            objects("SELECT public.dblink_exec('dbname=app', 'x')"),
            ["dblink_exec"]
        );
        assert_eq!(
            objects("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"),
            ["pg_terminate_backend"]
        );
        assert_eq!(objects("COPY t TO PROGRAM 'curl x'"), ["program"]);
        assert_eq!(objects("COPY t TO '/tmp/t.csv'"), ["server-file"]);
        assert_eq!(objects("REASSIGN OWNED BY old TO new"), ["role old"]);
        // MySQL and SQLite.
        assert_eq!(
            objects("CREATE USER 'bob'@'%' IDENTIFIED BY 'x'"),
            ["role bob"]
        );
        assert_eq!(objects("DROP DATABASE `app`"), ["database app"]);
        assert_eq!(objects("SET GLOBAL max_connections = 10"), ["system"]);
        assert_eq!(
            objects("SELECT * FROM t INTO OUTFILE '/tmp/x'"),
            ["server-file"]
        );
        assert_eq!(
            objects("ATTACH DATABASE 'other.db' AS other"),
            ["attached database"]
        );
    }

    #[test]
    fn do_blocks_and_dynamic_sql_are_read_but_function_bodies_are_not() {
        assert_eq!(
            objects(
                "DO $$ BEGIN CREATE ROLE app_ro; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
            ),
            ["role app_ro"]
        );
        assert_eq!(
            objects(
                "DO $$ BEGIN EXECUTE 'ALTER DATABASE ' || quote_ident(current_database()) || \
                 ' SET timezone = ''UTC'''; END $$"
            ),
            ["database (dynamic)"]
        );
        assert!(
            objects(
                "CREATE OR REPLACE FUNCTION f() RETURNS void LANGUAGE sql AS \
                 $$ SELECT dblink_exec('x', 'y') $$"
            )
            .is_empty()
        );
    }

    #[test]
    fn statements_inside_the_database_are_not_found() {
        for sql in [
            "CREATE TABLE role (id int, database text)",
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO readonly",
            "REVOKE INSERT ON t FROM bob",
            "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO readonly",
            "CREATE USER MAPPING FOR bob SERVER s",
            "ALTER TABLE t SET TABLESPACE fast",
            "SET ROLE readonly",
            "COPY t FROM STDIN",
            "COPY t TO STDOUT",
            "ALTER TABLE t OWNER TO bob",
            "-- ALTER DATABASE app SET x = 1\nSELECT 1",
            "CREATE POLICY p ON t TO readonly USING (true)",
            "ALTER TABLE t DROP role",
            "ALTER TABLE t ALTER role TYPE text",
            "CREATE INDEX i ON database (x)",
            "SET lock_timeout = '1s'",
            "SET SESSION sql_mode = ''",
        ] {
            assert!(objects(sql).is_empty(), "{sql}: {:?}", objects(sql));
        }
    }

    #[test]
    fn the_rest_of_the_migration_runs_without_them() {
        let sql = "CREATE TABLE t (id int);\nCOMMENT ON DATABASE app IS 'x';\nALTER TABLE t ADD v text -- c\n;";
        let found = find(sql, false);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].line, 2);
        assert_eq!(found[0].excerpt, "COMMENT ON DATABASE app IS 'x'");
        assert_eq!(
            without(sql, &found),
            "CREATE TABLE t (id int)\n;\nALTER TABLE t ADD v text -- c\n;\n"
        );
    }
}

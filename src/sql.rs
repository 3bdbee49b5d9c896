//! Just enough of PostgreSQL's lexical rules to split a migration into statements the way
//! psql does (single and double quotes, `E''` strings, dollar quotes, nested block comments,
//! `BEGIN ATOMIC … END` bodies), and to find statements that end the transaction a
//! migration runs in.

/// One statement of a migration: its text (no trailing `;`) and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement<'a> {
    pub text: &'a str,
    pub line: usize,
}

/// Split `sql` at top-level semicolons. Statements that hold only white space and comments
/// are dropped. Long on purpose: one scanner loop whose states (quotes, dollar quotes,
/// comments, BEGIN ATOMIC bodies) must be read together.
pub fn split(sql: &str) -> Vec<Statement<'_>> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    // Inside `BEGIN ATOMIC`: BEGIN and CASE open, END closes; `;` does not split. Nor
    // inside parentheses (`CREATE RULE … DO ALSO (INSERT …; INSERT …)`), as in psql.
    let mut atomic_depth = 0usize;
    let mut paren_depth = 0usize;
    let mut prev_word = String::new();
    // Lines are counted on from the last statement's start, not from the top each time:
    // a file of many statements is scanned once.
    let mut lines = (0, 1);
    // The statement's words so far, and whether it is a `CREATE … TRIGGER`: SQLite's
    // trigger body, `BEGIN … END`, holds statements of its own, as `BEGIN ATOMIC` does.
    let (mut words, mut create, mut trigger) = (0usize, false, false);
    while i < b.len() {
        match b[i] {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map_or(b.len(), |n| i + n + 1);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => i = past_block_comment(b, i),
            b'\'' => {
                let escapes =
                    i > 0 && matches!(b[i - 1], b'e' | b'E') && (i < 2 || !is_ident(b[i - 2]));
                i = skip_quoted(b, i, b'\'', escapes);
            }
            b'"' => i = skip_quoted(b, i, b'"', false),
            b'$' if i == 0 || !is_ident(b[i - 1]) => match dollar_tag(&sql[i..]) {
                Some(tag) => {
                    let body = i + tag.len();
                    i = sql[body..]
                        .find(tag)
                        .map_or(b.len(), |n| body + n + tag.len());
                }
                None => i += 1,
            },
            b'(' => {
                paren_depth += 1;
                i += 1;
            }
            b')' => {
                paren_depth = paren_depth.saturating_sub(1);
                i += 1;
            }
            b';' if atomic_depth == 0 && paren_depth == 0 => {
                push(sql, start, i, &mut lines, &mut out);
                i += 1;
                start = i;
                (words, create, trigger) = (0, false, false);
            }
            c if is_ident(c) && (i == 0 || !is_ident(b[i - 1])) => {
                let end = (i..b.len()).find(|&j| !is_ident(b[j])).unwrap_or(b.len());
                let word = sql[i..end].to_ascii_uppercase();
                let call = sql[end..].trim_start().starts_with('(');
                match word.as_str() {
                    "ATOMIC" if prev_word == "BEGIN" => atomic_depth += 1,
                    "BEGIN" if trigger && atomic_depth == 0 && !call => atomic_depth += 1,
                    "BEGIN" | "CASE" if atomic_depth > 0 => atomic_depth += 1,
                    "END" if atomic_depth > 0 => atomic_depth -= 1,
                    _ => {}
                }
                create |= words == 0 && word == "CREATE";
                trigger |= create && words <= 4 && word == "TRIGGER";
                words += 1;
                prev_word = word;
                i = end;
            }
            _ => i += 1,
        }
    }
    push(sql, start, b.len(), &mut lines, &mut out);
    out
}

/// `sql` cut into pieces of at most about `max` bytes, each a run of whole statements
/// ending at a statement's `;`, byte for byte as written (a piece is larger than `max` only
/// when one statement is): a large migration is sent piece by piece, so that neither the
/// client nor the server's parser holds all of it twice.
pub fn pieces(sql: &str, max: usize) -> Vec<&str> {
    let base = sql.as_ptr() as usize;
    let mut out = Vec::new();
    let (mut from, mut cut) = (0, 0);
    for st in split(sql) {
        let end = st.text.as_ptr() as usize - base + st.text.len();
        // Only white space lies between a statement's text and its `;`.
        let next = sql[end..].find(';').map_or(sql.len(), |n| end + n + 1);
        if next - from > max && cut > from {
            out.push(&sql[from..cut]);
            from = cut;
        }
        cut = next;
    }
    if !sql[from..].trim().is_empty() {
        out.push(&sql[from..]);
    }
    out
}

/// Add the statement between `start` and `end`, if it holds more than comments; `lines` is
/// an offset already counted to and the line it is on.
fn push<'a>(
    sql: &'a str,
    start: usize,
    end: usize,
    lines: &mut (usize, usize),
    out: &mut Vec<Statement<'a>>,
) {
    let text = sql[start..end].trim();
    let body = strip_leading_comments(text);
    if body.is_empty() {
        return;
    }
    let offset = start + (sql[start..end].len() - sql[start..end].trim_start().len());
    let leading = text.len() - body.len();
    let at = offset + leading;
    lines.1 += sql.as_bytes()[lines.0..at]
        .iter()
        .filter(|&&c| c == b'\n')
        .count();
    lines.0 = at;
    out.push(Statement {
        text,
        line: lines.1,
    });
}

/// Past the end of the block comment that opens at `open` (PostgreSQL nests them).
fn past_block_comment(b: &[u8], open: usize) -> usize {
    let (mut depth, mut i) = (1, open + 2);
    while i < b.len() && depth > 0 {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
        } else {
            i += 1;
        }
    }
    i
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// Past the closing quote (a doubled quote is an escaped one; with `escapes`, so is a
/// backslash-escaped one).
fn skip_quoted(b: &[u8], open: usize, quote: u8, escapes: bool) -> usize {
    let mut i = open + 1;
    while i < b.len() {
        if escapes && b[i] == b'\\' {
            i += 2;
        } else if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// `$tag$` or `$$` at the start of `s`.
fn dollar_tag(s: &str) -> Option<&str> {
    let rest = &s[1..];
    let end = rest.find('$')?;
    let tag = &rest[..end];
    let valid =
        tag.is_empty() || (tag.bytes().all(is_ident) && !tag.as_bytes()[0].is_ascii_digit());
    valid.then(|| &s[..end + 2])
}

/// The statement with its leading white space and comments removed.
fn strip_leading_comments(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.find('\n').map_or("", |n| &rest[n + 1..]);
        } else if s.starts_with("/*") {
            s = &s[past_block_comment(s.as_bytes(), 0).min(s.len())..];
        } else {
            return s;
        }
    }
}

/// The first `n` words of a statement, upper-cased.
fn leading_words(text: &str, n: usize) -> Vec<String> {
    strip_leading_comments(text)
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .take(n)
        .map(str::to_ascii_uppercase)
        .collect()
}

/// The first statement that starts or ends a transaction (`BEGIN`, `START TRANSACTION`,
/// `COMMIT`, `END`, `ROLLBACK`, `ABORT`, `PREPARE TRANSACTION`): inside the transaction
/// schemagate wraps a migration in, it would commit part of the migration early, or roll
/// it back while the migration is recorded as applied. `ROLLBACK TO SAVEPOINT` is fine.
pub fn transaction_control(sql: &str) -> Option<(String, usize)> {
    split(sql).into_iter().find_map(|st| {
        let words = leading_words(st.text, 3);
        let first = words.first()?.as_str();
        let second = words.get(1).map(String::as_str);
        let hit = match first {
            "BEGIN" | "COMMIT" | "END" | "ABORT" => true,
            "START" => second == Some("TRANSACTION"),
            // `ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] s` stays inside the transaction.
            "ROLLBACK" => !words.iter().skip(1).any(|w| w == "TO"),
            "PREPARE" => second == Some("TRANSACTION"),
            _ => false,
        };
        hit.then(|| (words[..words.len().min(2)].join(" "), st.line))
    })
}

/// Whether a statement that failed may have left something behind on its own: a failed
/// `CREATE INDEX CONCURRENTLY` (or `REINDEX … CONCURRENTLY`) leaves an invalid index.
pub fn leaves_debris_on_failure(text: &str) -> bool {
    let words = leading_words(text, 6);
    let has = |w: &str| words.iter().any(|x| x == w);
    (has("INDEX") || has("REINDEX")) && has("CONCURRENTLY")
}

/// Whether PostgreSQL runs a statement only outside a transaction block, where a query of
/// several statements (one implicit transaction) would have it refused: the `CONCURRENTLY`
/// forms of `CREATE INDEX`, `DROP INDEX` and `REINDEX`, `VACUUM`, `CREATE`/`DROP DATABASE`
/// and `TABLESPACE`, `ALTER SYSTEM`, and what starts or ends a transaction. (A statement
/// missed here is refused there with SQLSTATE 25001 before it does anything, and then sent
/// alone.)
pub fn runs_outside_transaction(text: &str) -> bool {
    if transaction_control(text).is_some() || leaves_debris_on_failure(text) {
        return true;
    }
    let words = leading_words(text, 3);
    let word = |i: usize| words.get(i).map_or("", String::as_str);
    match word(0) {
        "VACUUM" => true,
        "CREATE" | "DROP" => matches!(word(1), "DATABASE" | "TABLESPACE"),
        "ALTER" => word(1) == "SYSTEM",
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(sql: &str) -> Vec<&str> {
        split(sql).into_iter().map(|s| s.text).collect()
    }

    #[test]
    fn splits_like_psql() {
        assert_eq!(
            texts("CREATE TABLE a (x text DEFAULT ';');\nSELECT 1; ; -- c;\n"),
            vec!["CREATE TABLE a (x text DEFAULT ';')", "SELECT 1"]
        );
        assert_eq!(
            texts("DO $x$ BEGIN PERFORM 1; END $x$;\nSELECT $$a;b$$;"),
            vec!["DO $x$ BEGIN PERFORM 1; END $x$", "SELECT $$a;b$$"]
        );
        assert_eq!(
            texts("SELECT E'it\\'s;'; SELECT 'it''s;'; SELECT \"a;\"\"b\" FROM t"),
            vec![
                "SELECT E'it\\'s;'",
                "SELECT 'it''s;'",
                "SELECT \"a;\"\"b\" FROM t"
            ]
        );
        assert_eq!(
            texts("/* a /* nested; */ ; */ SELECT 1; SELECT $1"),
            vec!["/* a /* nested; */ ; */ SELECT 1", "SELECT $1"]
        );
        assert_eq!(
            texts(
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC \
                 SELECT CASE WHEN true THEN 1 END; SELECT 2; END; SELECT 3"
            )
            .len(),
            2
        );
    }

    #[test]
    fn a_trigger_body_is_one_statement() {
        assert_eq!(
            texts(
                "CREATE TEMP TRIGGER IF NOT EXISTS t AFTER INSERT ON a BEGIN \
                 INSERT INTO b VALUES (1); UPDATE c SET x = CASE WHEN 1 THEN 2 END; END;\n\
                 SELECT 1; CREATE TRIGGER u BEFORE INSERT ON a EXECUTE FUNCTION begin(); SELECT 2"
            ),
            vec![
                "CREATE TEMP TRIGGER IF NOT EXISTS t AFTER INSERT ON a BEGIN INSERT INTO b \
                 VALUES (1); UPDATE c SET x = CASE WHEN 1 THEN 2 END; END",
                "SELECT 1",
                "CREATE TRIGGER u BEFORE INSERT ON a EXECUTE FUNCTION begin()",
                "SELECT 2"
            ]
        );
    }

    #[test]
    fn pieces_are_whole_statements_as_written() {
        let sql = "SELECT 1;\n-- one; two\nSELECT 'a;b' ;\nSELECT 333333;   SELECT 4 -- end";
        for max in [0, 10, 30, 1000] {
            let pieces = pieces(sql, max);
            assert_eq!(pieces.concat(), sql, "{max}");
            for p in &pieces {
                assert!(
                    p.len() <= max.max(22) || split(p).len() == 1,
                    "{max}: {p:?}"
                );
                assert!(!split(p).is_empty(), "{max}: {p:?}");
            }
        }
        assert_eq!(pieces(sql, 0).len(), 4);
        assert_eq!(pieces(sql, 1000), vec![sql]);
        assert_eq!(pieces("SELECT 1;\n", 0), vec!["SELECT 1;\n"]);
    }

    #[test]
    fn statements_know_their_line() {
        let s = split("-- no-transaction\n\nCREATE INDEX a ON t (x);\n-- two\nDROP TABLE u;");
        assert_eq!((s[0].line, s[1].line), (3, 5));
    }

    #[test]
    fn finds_transaction_control() {
        assert_eq!(
            transaction_control("CREATE TABLE c1 (id int);\nCOMMIT;\nCREATE TABLE c2 (id int);"),
            Some(("COMMIT".into(), 2))
        );
        assert_eq!(
            transaction_control("begin;\ncreate table r (id int);\nrollback;").map(|t| t.1),
            Some(1)
        );
        assert!(transaction_control("START TRANSACTION;").is_some());
        assert!(transaction_control("SAVEPOINT s; ROLLBACK TO SAVEPOINT s;").is_none());
        assert!(
            transaction_control("ROLLBACK WORK TO SAVEPOINT s; ROLLBACK TRANSACTION TO s")
                .is_none()
        );
        assert_eq!(
            texts(
                "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2)); SELECT 1"
            ),
            vec![
                "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2))",
                "SELECT 1"
            ]
        );
        assert!(transaction_control("DO $$ BEGIN COMMIT; END $$;").is_none());
        assert!(transaction_control("SELECT 'COMMIT;'; -- COMMIT;").is_none());
        assert!(
            transaction_control(
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;"
            )
            .is_none()
        );
    }

    #[test]
    fn knows_what_runs_only_outside_a_transaction_block() {
        for outside in [
            "CREATE INDEX CONCURRENTLY i ON t (x)",
            "create unique index concurrently if not exists i on t (x)",
            "DROP INDEX CONCURRENTLY i",
            "REINDEX INDEX CONCURRENTLY i",
            "-- why\nVACUUM (ANALYZE) t",
            "CREATE DATABASE d",
            "DROP TABLESPACE s",
            "ALTER SYSTEM SET work_mem = '8MB'",
            "COMMIT",
            "BEGIN",
        ] {
            assert!(runs_outside_transaction(outside), "{outside}");
        }
        for inside in [
            "CREATE INDEX i ON t (x)",
            "UPDATE t SET x = 1",
            "ALTER TABLE t ADD COLUMN y int",
            "CREATE TABLE concurrently_made (x int)",
            "SELECT 'VACUUM'",
        ] {
            assert!(!runs_outside_transaction(inside), "{inside}");
        }
    }
}

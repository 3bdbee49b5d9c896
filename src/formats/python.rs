//! Python source read as tokens, never run: enough of Python's lexer (comments, every kind
//! of string, brackets spanning lines, line continuations, indentation) to find a statement
//! `name = <literal>` or `name: <annotation> = <literal>` and read the literal's strings,
//! tuples, lists and `None`. A word in a comment or a docstring is never a statement, and a
//! bracket inside a string never closes a list.

/// A literal as assigned: what Alembic's and Django's migration attributes hold.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Str(String),
    /// A tuple or a list.
    Seq(Vec<Value>),
    None,
    /// Anything else: a name, a call (`migrations.swappable_dependency(...)`), arithmetic.
    Other,
}

impl Value {
    /// The strings of a string, or of a tuple or list of strings (`None`: none).
    pub(super) fn strings(&self) -> Vec<String> {
        match self {
            Value::Str(s) => vec![s.clone()],
            Value::Seq(items) => items
                .iter()
                .filter_map(|v| match v {
                    Value::Str(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            Value::None | Value::Other => Vec::new(),
        }
    }

    /// `[("app", "name"), ...]`: each pair of strings (other elements are skipped).
    pub(super) fn pairs(&self) -> Vec<(String, String)> {
        let Value::Seq(items) = self else {
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|v| match v {
                Value::Seq(pair) => match pair.as_slice() {
                    [Value::Str(a), Value::Str(b)] => Some((a.clone(), b.clone())),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }
}

/// Where an assignment counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    /// A module-level statement (Alembic's `revision`, `down_revision`, `depends_on`).
    Module,
    /// A statement of a class body (Django's `Migration.dependencies` and `replaces`).
    Class,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Name(String),
    Str(String),
    Op(char),
    /// A number, or an operator that is not one of the few above (`==`, `+=`, `->`...).
    Other,
}

/// One logical line: its indentation and its tokens.
struct Line {
    indent: usize,
    toks: Vec<Tok>,
}

/// The value of the first `name = ...` statement in `scope`; `None` when there is none.
pub(super) fn assigned(text: &str, name: &str, scope: Scope) -> Option<Value> {
    // The indentation of the current class body (the first statement after `class`).
    let mut class_at: Option<usize> = None;
    let mut body: Option<usize> = None;
    for line in lines(text) {
        if let Some(c) = class_at {
            if line.indent <= c {
                class_at = None;
                body = None;
            } else if body.is_none() {
                body = Some(line.indent);
            }
        }
        if line.toks.first() == Some(&Tok::Name("class".into())) {
            class_at = Some(line.indent);
            body = None;
            continue;
        }
        let in_scope = match scope {
            Scope::Module => line.indent == 0,
            Scope::Class => body == Some(line.indent),
        };
        if in_scope
            && line.toks.first() == Some(&Tok::Name(name.into()))
            && let Some(rhs) = rhs(&line.toks[1..])
        {
            return Some(expression_list(rhs));
        }
    }
    None
}

/// The right-hand side of `= value` or `: annotation = value` (not `==`, `+=`...).
fn rhs(toks: &[Tok]) -> Option<&[Tok]> {
    match toks.first()? {
        Tok::Op('=') => Some(&toks[1..]),
        Tok::Op(':') => {
            let mut depth = 0i32;
            for (i, t) in toks.iter().enumerate().skip(1) {
                match t {
                    Tok::Op('(' | '[' | '{') => depth += 1,
                    Tok::Op(')' | ']' | '}') => depth -= 1,
                    Tok::Op('=') if depth == 0 => return Some(&toks[i + 1..]),
                    _ => {}
                }
            }
            None
        }
        _ => None,
    }
}

/// `a`, or `a, b` (a bare tuple).
fn expression_list(toks: &[Tok]) -> Value {
    let mut i = 0;
    let (items, trailing_comma) = sequence(toks, &mut i, None);
    if items.len() == 1 && !trailing_comma {
        items.into_iter().next().unwrap_or(Value::Other)
    } else {
        Value::Seq(items)
    }
}

/// Comma-separated expressions up to `close` (or the end); whether a comma ended it.
fn sequence(toks: &[Tok], i: &mut usize, close: Option<char>) -> (Vec<Value>, bool) {
    let mut items = Vec::new();
    let mut trailing_comma = false;
    while *i < toks.len() {
        if let (Tok::Op(c), Some(close)) = (&toks[*i], close)
            && *c == close
        {
            *i += 1;
            return (items, trailing_comma);
        }
        items.push(expression(toks, i, close));
        trailing_comma = false;
        if toks.get(*i) == Some(&Tok::Op(',')) {
            *i += 1;
            trailing_comma = true;
        }
    }
    (items, trailing_comma)
}

/// One expression; anything but a literal is `Other`, skipped up to the next `,` or `close`.
fn expression(toks: &[Tok], i: &mut usize, close: Option<char>) -> Value {
    let start = *i;
    let value = match &toks[*i] {
        Tok::Str(_) => {
            // Adjacent literals concatenate: `"a" "b"`.
            let mut s = String::new();
            while let Some(Tok::Str(part)) = toks.get(*i) {
                s.push_str(part);
                *i += 1;
            }
            Some(Value::Str(s))
        }
        Tok::Name(n) if n == "None" => {
            *i += 1;
            Some(Value::None)
        }
        Tok::Op('[') => {
            *i += 1;
            Some(Value::Seq(sequence(toks, i, Some(']')).0))
        }
        Tok::Op('(') => {
            *i += 1;
            let (mut items, trailing_comma) = sequence(toks, i, Some(')'));
            Some(if items.len() == 1 && !trailing_comma {
                items.remove(0)
            } else {
                Value::Seq(items)
            })
        }
        _ => None,
    };
    let ends_here = |t: Option<&Tok>| match t {
        None | Some(Tok::Op(',')) => true,
        Some(Tok::Op(c)) => Some(*c) == close,
        _ => false,
    };
    if let Some(v) = value
        && ends_here(toks.get(*i))
    {
        return v;
    }
    // Not a literal (a call, a name, an operator): skip it, brackets balanced.
    *i = start;
    let mut depth = 0i32;
    while *i < toks.len() {
        match &toks[*i] {
            Tok::Op('(' | '[' | '{') => depth += 1,
            Tok::Op(')' | ']' | '}') if depth > 0 => depth -= 1,
            t if depth == 0 && ends_here(Some(t)) => break,
            _ => {}
        }
        *i += 1;
    }
    Value::Other
}

/// The logical lines of a Python source: a bracket or a backslash continues a line; comments
/// and blank lines make none.
fn lines(text: &str) -> Vec<Line> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut current = Line {
        indent: 0,
        toks: Vec::new(),
    };
    let mut depth = 0i32;
    let mut column = 0usize;
    let mut i = 0;
    let end_line = |current: &mut Line, out: &mut Vec<Line>| {
        if !current.toks.is_empty() {
            out.push(std::mem::replace(
                current,
                Line {
                    indent: 0,
                    toks: Vec::new(),
                },
            ));
        }
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\n' => {
                if depth == 0 {
                    end_line(&mut current, &mut out);
                }
                column = 0;
                i += 1;
                continue;
            }
            ' ' | '\t' | '\r' | '\x0c' => {
                column += if c == '\t' { 8 - column % 8 } else { 1 };
                i += 1;
                continue;
            }
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            '\\' if chars.get(i + 1) == Some(&'\n') => {
                i += 2;
                column = 0;
                continue;
            }
            _ => {}
        }
        if current.toks.is_empty() {
            current.indent = column;
        }
        let tok_start = i;
        let tok = if c == '"' || c == '\'' {
            string(&chars, &mut i, false)
        } else if c.is_alphabetic() || c == '_' {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[tok_start..i].iter().collect();
            let prefix = word.to_ascii_lowercase();
            if matches!(chars.get(i), Some('"' | '\''))
                && matches!(
                    prefix.as_str(),
                    "r" | "u" | "b" | "f" | "t" | "br" | "rb" | "fr" | "rf" | "tr" | "rt"
                )
            {
                string(&chars, &mut i, prefix.contains('r'))
            } else {
                Tok::Name(word)
            }
        } else if c.is_ascii_digit() {
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '.' || chars[i] == '_')
            {
                i += 1;
            }
            Tok::Other
        } else {
            i += 1;
            let next = chars.get(i).copied();
            match c {
                '(' | '[' | '{' => {
                    depth += 1;
                    Tok::Op(c)
                }
                ')' | ']' | '}' => {
                    depth = (depth - 1).max(0);
                    Tok::Op(c)
                }
                // `==`, `<=`, `+=`, `:=`, `->`, `**=`, `//=`, `>>=`...: never an assignment.
                '=' | '<' | '>' | '!' | ':' | '+' | '-' | '*' | '/' | '%' | '&' | '|' | '^'
                | '@'
                    if next == Some('=')
                        || (c == '-' && next == Some('>'))
                        || (matches!(c, '*' | '/' | '<' | '>') && next == Some(c)) =>
                {
                    while matches!(chars.get(i), Some('=' | '>' | '*' | '/' | '<')) {
                        i += 1;
                    }
                    Tok::Other
                }
                _ => Tok::Op(c),
            }
        };
        current.toks.push(tok);
        column += i - tok_start;
    }
    end_line(&mut current, &mut out);
    out
}

/// A string literal at `chars[*i]` (its quote), single or triple quoted.
fn string(chars: &[char], i: &mut usize, raw: bool) -> Tok {
    let q = chars[*i];
    let triple = chars.get(*i + 1) == Some(&q) && chars.get(*i + 2) == Some(&q);
    *i += if triple { 3 } else { 1 };
    let mut s = String::new();
    while *i < chars.len() {
        let c = chars[*i];
        if c == q && (!triple || (chars.get(*i + 1) == Some(&q) && chars.get(*i + 2) == Some(&q))) {
            *i += if triple { 3 } else { 1 };
            return Tok::Str(s);
        }
        if c == '\n' && !triple {
            // An unterminated string: Python would refuse the file; end it here.
            return Tok::Str(s);
        }
        if c == '\\' && *i + 1 < chars.len() {
            let e = chars[*i + 1];
            *i += 2;
            if raw {
                s.push('\\');
                s.push(e);
                continue;
            }
            match e {
                '\n' => {}
                'n' => s.push('\n'),
                't' => s.push('\t'),
                'r' => s.push('\r'),
                '\\' | '\'' | '"' => s.push(e),
                _ => {
                    s.push('\\');
                    s.push(e);
                }
            }
            continue;
        }
        s.push(c);
        *i += 1;
    }
    Tok::Str(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Value::Str(v.into())
    }

    #[test]
    fn module_assignments_of_an_alembic_revision() {
        let text = "\"\"\"doc\nrevision = 'not this one'\nRevision ID: x\n\"\"\"\n\
                    revision: str = 'c3'\n\
                    down_revision: Union[str, Sequence[str], None] = (\n    'a1',  # left )\n    \"b2\",\n)\n\
                    branch_labels = None\ndepends_on = None\n\
                    def upgrade():\n    revision = 'inner'\n";
        assert_eq!(assigned(text, "revision", Scope::Module), Some(s("c3")));
        assert_eq!(
            assigned(text, "down_revision", Scope::Module),
            Some(Value::Seq(vec![s("a1"), s("b2")]))
        );
        assert_eq!(
            assigned(text, "depends_on", Scope::Module),
            Some(Value::None)
        );
        assert_eq!(assigned(text, "missing", Scope::Module), None);
        // `revision == x` and `revision += x` are not assignments.
        let text = "if revision == 'a':\n    pass\nrevision += 'b'\nrevision = ('c')\n";
        assert_eq!(assigned(text, "revision", Scope::Module), Some(s("c")));
    }

    #[test]
    fn class_attributes_of_a_django_squash() {
        // Django's squashmigrations template: a comment naming "dependencies" above the
        // class, strings holding brackets, a call among the dependencies.
        let text = "# Functions from the following migrations need manual copying.\n\
                    # Move them and any dependencies into this file, then update the\n\
                    # RunPython operations to refer to the local versions: [x]\n\
                    from django.db import migrations\n\n\
                    def forwards(apps, schema_editor):\n    dependencies = ['not', 'these']\n\n\
                    class Migration(migrations.Migration):\n\n    \
                    replaces = [('shop', '0001_initial'), (\"shop\", '0002_a]b'),]\n\n    \
                    dependencies = [\n        migrations.swappable_dependency(settings.AUTH_USER_MODEL),\n        \
                    ('auth', '0012_x'),  # ('shop', 'commented')\n        ('shop', \\\n  '0000_base'),\n    ]\n\n    \
                    operations = [migrations.RunSQL(\"SELECT '['\")]\n";
        assert_eq!(
            assigned(text, "replaces", Scope::Class).unwrap().pairs(),
            [
                ("shop".to_owned(), "0001_initial".to_owned()),
                ("shop".to_owned(), "0002_a]b".to_owned())
            ]
        );
        assert_eq!(
            assigned(text, "dependencies", Scope::Class)
                .unwrap()
                .pairs(),
            [
                ("auth".to_owned(), "0012_x".to_owned()),
                ("shop".to_owned(), "0000_base".to_owned())
            ]
        );
        assert_eq!(assigned(text, "dependencies", Scope::Module), None);
    }

    #[test]
    fn strings_of_every_kind() {
        let text =
            "a = r'x\\y' b\"z\" '''t\n'q'\n'''\nb = ('one',)\nc = 'x', \"y\"\nd = f(1) + 2\n";
        assert_eq!(assigned(text, "a", Scope::Module), Some(s("x\\yzt\n'q'\n")));
        assert_eq!(
            assigned(text, "b", Scope::Module),
            Some(Value::Seq(vec![s("one")]))
        );
        assert_eq!(
            assigned(text, "c", Scope::Module).unwrap().strings(),
            ["x", "y"]
        );
        assert_eq!(assigned(text, "d", Scope::Module), Some(Value::Other));
    }
}

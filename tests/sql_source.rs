//! A look through the source for SQL built from request data. Every value a
//! request carries must reach ClickHouse as a server-side parameter
//! (`{p0:String}`); only identifiers from the validated spec and typed numbers
//! may be spliced into SQL text. This test finds the SQL the read and write
//! paths build and rejects quoted splices (`'{x}'`, the shape of a string-built
//! value) and queries run from plain strings outside the parameterised builder.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// String literals of a source file, with the line they start on.
fn literals(src: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let b = src.as_bytes();
    let (mut i, mut line) = (0, 1);
    while i < b.len() {
        match b[i] {
            b'\n' => line += 1,
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'\'' if b.get(i + 2) == Some(&b'\'') || (b.get(i + 1) == Some(&b'\\') && b.get(i + 3) == Some(&b'\'')) => {
                // A char literal such as '"' or '\''.
                i += if b.get(i + 1) == Some(&b'\\') { 4 } else { 3 };
                continue;
            }
            b'"' => {
                let start_line = line;
                let mut s = String::new();
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        s.push(b[i + 1] as char);
                        i += 2;
                        continue;
                    }
                    if b[i] == b'\n' {
                        line += 1;
                    }
                    s.push(b[i] as char);
                    i += 1;
                }
                out.push((start_line, s));
            }
            _ => {}
        }
        i += 1;
    }
    out
}

fn is_sql(s: &str) -> bool {
    let u = s.to_ascii_uppercase();
    ["SELECT ", " FROM ", " WHERE ", "INSERT INTO", " AND ", "ORDER BY", "GROUP BY"].iter().any(|k| u.contains(k))
}

#[test]
fn request_paths_splice_no_values_into_sql() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["api/src", "ingest/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 10, "found the sources");
    let mut sql_literals = 0;
    let mut problems = Vec::new();
    // The benchmarks set up their own data; no request reaches them.
    files.retain(|f| f.file_name().is_some_and(|n| n != "bench.rs"));
    for f in &files {
        let whole = std::fs::read_to_string(f).expect("source");
        // Unit tests set up their own databases; no request reaches them.
        let src = whole.split("\n#[cfg(test)]").next().unwrap_or_default();
        for (line, lit) in literals(src) {
            if !is_sql(&lit) {
                continue;
            }
            sql_literals += 1;
            // A splice inside quotes builds a string value into the SQL text.
            for quoted in ["'{", "\"{", "%{"] {
                if let Some(at) = lit.find(quoted)
                    && !lit[at + quoted.len()..].starts_with('{')
                {
                    problems.push(format!("{}:{line}: quoted splice in {lit:?}", f.display()));
                }
            }
        }
        // Queries go through the parameterised builder, never a raw formatted string.
        for (n, l) in src.lines().enumerate() {
            if l.contains(".query(&format!") || l.contains(".query_raw(&format!") {
                problems.push(format!("{}:{}: a query built with format! outside the builder: {}", f.display(), n + 1, l.trim()));
            }
        }
    }
    assert!(sql_literals > 10, "found the SQL ({sql_literals} literals)");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

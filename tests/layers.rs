//! The layers stay layered: every file under `src/` uses only the layers the table in
//! `src/lib.rs` ("## Layers", column "may use") allows its own layer, through any path the
//! compiler would follow — a `use`, an inline `crate::…` path, a `pub use` re-export, a
//! grouped `crate::{…}`, a `super::super::…` that climbs out of its layer, or a name the crate
//! root re-exports from a layer. Comments and string literals are not code and are skipped.
//!
//! The table is read from `src/lib.rs` itself, so the rule a newcomer reads and the rule this
//! test keeps are one text. The checker's own cases (at the end) show it catches each form.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layer table: layer → the layers it may use (besides itself).
type Rule = BTreeMap<String, BTreeSet<String>>;

/// One place where a file reaches a layer it may not.
#[derive(Debug, PartialEq, Eq)]
struct Breach {
    line: usize,
    from: String,
    to: String,
    path: String,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Reads the table under `## Layers` in lib.rs: rows `//! | \`layer\` | … | may use | …`,
/// the third column naming the layers it may use in backticks (or `—` for none).
fn read_rule(lib: &str) -> Rule {
    let mut rule = Rule::new();
    let mut inside = false;
    for line in lib.lines() {
        let Some(text) = line.strip_prefix("//!") else {
            continue;
        };
        let text = text.trim();
        if text.starts_with("## ") {
            inside = text == "## Layers";
            continue;
        }
        if !inside || !text.starts_with("| `") {
            continue;
        }
        let cells: Vec<&str> = text.trim_matches('|').split('|').map(str::trim).collect();
        let (Some(layer), Some(may)) = (cells.first(), cells.get(2)) else {
            continue;
        };
        let layer = layer.trim_matches('`').to_owned();
        let may: BTreeSet<String> = may
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        rule.insert(layer, may);
    }
    rule
}

/// Names the crate root re-exports, and the layer each comes from (`pub use node::…::{A, B}`).
fn root_exports(lib: &str, rule: &Rule) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for statement in code_of(lib).split(';') {
        let Some(path) = statement.trim().strip_prefix("pub use ") else {
            continue;
        };
        let path = path
            .trim_start_matches("crate::")
            .trim_start_matches("self::");
        let Some(layer) = path.split("::").next().filter(|l| rule.contains_key(*l)) else {
            continue;
        };
        let items = match (path.find('{'), path.rfind('}')) {
            (Some(open), Some(close)) if open < close => &path[open + 1..close],
            _ => path,
        };
        for item in items.split(',') {
            let last = item.rsplit("::").next().unwrap_or("");
            let name = last.split(" as ").last().unwrap_or("").trim();
            if !name.is_empty() && name != "self" {
                out.insert(name.to_owned(), layer.to_owned());
            }
        }
    }
    out
}

/// The source with comments and the insides of string and char literals blanked out (line
/// breaks kept, so line numbers hold).
fn code_of(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, s: &[u8]| {
        for &c in s {
            out.push(if c == b'\n' { '\n' } else { ' ' });
        }
    };
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest.starts_with(b"/*") {
            // Block comments nest in Rust.
            let (mut depth, mut j) = (0usize, 0usize);
            while j < rest.len() {
                if rest[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, &rest[..j]);
            i += j;
        } else if let Some((prefix, hashes)) = raw_string_start(rest) {
            let open = prefix + hashes + 1; // b?r, hashes, quote
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            let end = rest[open..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map(|p| open + p + close.len())
                .unwrap_or(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest[0] == b'"' || rest.starts_with(b"b\"") {
            let start = usize::from(rest[0] == b'b') + 1;
            let mut j = start;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest[0] == b'\'' {
            // A char literal ('x', '\n', '\u{..}'), else a lifetime or label.
            let len = if rest.get(1) == Some(&b'\\') {
                rest[2..].iter().position(|&c| c == b'\'').map(|p| p + 3)
            } else {
                text[i + 1..]
                    .chars()
                    .next()
                    .map(char::len_utf8)
                    .filter(|&n| rest.get(1 + n) == Some(&b'\''))
                    .map(|n| n + 2)
            };
            match len {
                Some(len) => {
                    blank(&mut out, &rest[..len]);
                    i += len;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let c = text[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// `r"`, `r#"`, `br##"`, …: the length of `r` or `br`, and how many `#` the raw string uses.
fn raw_string_start(rest: &[u8]) -> Option<(usize, usize)> {
    let prefix = if rest.starts_with(b"br") { 2 } else { 1 };
    if rest.get(prefix - 1) != Some(&b'r') {
        return None;
    }
    let hashes = rest[prefix..].iter().take_while(|&&c| c == b'#').count();
    (rest.get(prefix + hashes) == Some(&b'"')).then_some((prefix, hashes))
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The module path of a source file: `src/delivery/hub/ledger.rs` → `[delivery, hub, ledger]`,
/// `mod.rs` and `lib.rs` naming their folder.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .skip(1) // src
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if stem != "mod" && stem != "lib" && stem != "main" {
            parts.push(stem.to_owned());
        }
    }
    parts
}

/// Every breach in one file. `path` is relative to the crate (`src/…`); `layer` is the
/// file's layer, None for the crate root (lib.rs, main.rs), which may use every layer.
fn breaches(
    path: &str,
    text: &str,
    rule: &Rule,
    exports: &BTreeMap<String, String>,
) -> Vec<Breach> {
    let module = module_path(Path::new(path));
    let Some(layer) = module.first().filter(|l| rule.contains_key(*l)).cloned() else {
        return Vec::new();
    };
    let may = &rule[&layer];
    let allowed = |to: &str| to == layer || may.contains(to);
    let code = code_of(text);
    let mut found = Vec::new();
    let check = |line: usize, to: &str, shown: String, found: &mut Vec<Breach>| {
        let target = if rule.contains_key(to) {
            to.to_owned()
        } else if let Some(l) = exports.get(to) {
            l.clone()
        } else {
            // Not a layer: a top-level module no row of the table places.
            format!("{to} (in no layer)")
        };
        if !allowed(&target) {
            found.push(Breach {
                line,
                from: layer.clone(),
                to: target,
                path: shown,
            });
        }
    };
    // Inline modules (`mod tests { … }`) deepen what `super` climbs from: each is noted with
    // the brace depth it opened at, and left when a `}` brings the depth back to it.
    let mut inline: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    for (n, line) in code.lines().enumerate() {
        let line_no = n + 1;
        let trimmed = line.trim_start();
        let item = ["pub(crate) ", "pub(super) ", "pub "]
            .iter()
            .find_map(|p| trimmed.strip_prefix(p))
            .unwrap_or(trimmed);
        if item.starts_with("mod ") && item.trim_end().ends_with('{') {
            inline.push(depth);
        }
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if inline.last() == Some(&depth) {
                        inline.pop();
                    }
                }
                _ => {}
            }
            let starts_word = i == 0 || !(is_ident(chars[i - 1]) || chars[i - 1] == '$');
            let from = char_offset(line, i);
            let at = |s: &str| starts_word && line[from..].starts_with(s);
            if at("crate::") {
                let after = &line[from + "crate::".len()..];
                for to in first_segments(after) {
                    check(line_no, &to, line[from..].trim().to_owned(), &mut found);
                }
                i += "crate::".len();
                continue;
            }
            if at("super::") {
                let mut rest = &line[from..];
                let mut ups = 0;
                while let Some(r) = rest.strip_prefix("super::") {
                    ups += 1;
                    rest = r;
                }
                // The first climbs only leave the inline modules; the rest climb the file's
                // own path, and past its first segment (the layer) reach the crate root.
                let ups_out_of_file = ups - ups.min(inline.len());
                if ups_out_of_file >= module.len() {
                    for to in first_segments(rest) {
                        check(line_no, &to, line[from..].trim().to_owned(), &mut found);
                    }
                }
                i += ups * "super::".len();
                continue;
            }
            i += 1;
        }
    }
    found
}

/// Byte offset of the `i`-th char of `line`.
fn char_offset(line: &str, i: usize) -> usize {
    line.char_indices().nth(i).map_or(line.len(), |(o, _)| o)
}

/// The first path segments after `crate::`: one name, or each name of a `{a, b::c}` group.
fn first_segments(after: &str) -> Vec<String> {
    if let Some(group) = after.strip_prefix('{') {
        let mut names = Vec::new();
        let mut level = 0;
        let mut item = String::new();
        for c in group.chars() {
            match c {
                '{' => level += 1,
                '}' if level == 0 => break,
                '}' => level -= 1,
                ',' if level == 0 => {
                    names.push(std::mem::take(&mut item));
                    continue;
                }
                _ => {}
            }
            if level == 0 || c != '{' {
                item.push(c);
            }
        }
        names.push(item);
        names
            .iter()
            .filter_map(|n| {
                let n: String = n.trim().chars().take_while(|&c| is_ident(c)).collect();
                (!n.is_empty() && n != "self").then_some(n)
            })
            .collect()
    } else {
        let name: String = after.chars().take_while(|&c| is_ident(c)).collect();
        if name.is_empty() {
            Vec::new()
        } else {
            vec![name]
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn the_rule() -> (Rule, BTreeMap<String, String>) {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).expect("read src/lib.rs");
    let rule = read_rule(&lib);
    let exports = root_exports(&lib, &rule);
    (rule, exports)
}

#[test]
fn the_table_names_every_layer_folder_and_each_opens_with_its_place() {
    let (rule, _) = the_rule();
    let want: BTreeSet<&str> = ["node", "broker", "delivery", "auth", "wire"].into();
    let have: BTreeSet<&str> = rule.keys().map(String::as_str).collect();
    assert_eq!(have, want, "the layer table in src/lib.rs");
    assert!(rule["wire"].is_empty(), "wire uses no other layer");
    for (layer, may) in &rule {
        for to in may {
            assert!(
                rule.contains_key(to),
                "{layer} may use `{to}`: no such layer"
            );
        }
    }
    // Each layer is a folder whose mod.rs opens by saying what it does and its place.
    for layer in rule.keys() {
        let path = root().join("src").join(layer).join("mod.rs");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let opening: String = text
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        for needed in ["May use", "Used by"] {
            assert!(
                opening.contains(needed),
                "src/{layer}/mod.rs opens without \"{needed}\""
            );
        }
    }
}

#[test]
fn every_file_uses_only_the_layers_its_own_may_use() {
    let (rule, exports) = the_rule();
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    assert!(
        files.len() > 40,
        "found only {} files under src/",
        files.len()
    );
    let mut report = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(root())
            .expect("under the crate")
            .to_owned();
        let rel_text = rel.to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(file).expect("read a source file");
        // A `#[path]` would let a file live in one folder and be a module of another.
        assert!(
            !code_of(&text).contains("#[path"),
            "{rel_text}: #[path] hides which layer a file is in"
        );
        let layered = rule.contains_key(module_path(&rel).first().map_or("", String::as_str));
        let at_root = matches!(rel_text.as_str(), "src/lib.rs" | "src/main.rs");
        assert!(
            layered || at_root,
            "{rel_text} is in no layer: put it in a layer folder (src/lib.rs, \"## Layers\")"
        );
        for b in breaches(&rel_text, &text, &rule, &exports) {
            let may: Vec<&str> = rule[&b.from].iter().map(String::as_str).collect();
            report.push(format!(
                "{rel_text}:{}: {} uses {} ({}); {} may use: {}",
                b.line,
                b.from,
                b.to,
                b.path.trim_end_matches(';'),
                b.from,
                if may.is_empty() {
                    "no other layer".to_owned()
                } else {
                    may.join(", ")
                },
            ));
        }
    }
    assert!(
        report.is_empty(),
        "imports must run down the table in src/lib.rs (\"## Layers\"):\n{}",
        report.join("\n")
    );
}

// The checker's own cases: each form of reaching up is caught, and what is allowed is not.

fn rule_for_cases() -> (Rule, BTreeMap<String, String>) {
    let lib = "//! ## Layers\n\
               //! | layer | what | may use | used by |\n\
               //! |---|---|---|---|\n\
               //! | `node` | the process | `broker`, `delivery`, `auth`, `wire` | — |\n\
               //! | `broker` | ids | `delivery`, `wire` | `node` |\n\
               //! | `delivery` | fan-out | `wire` | `node`, `broker` |\n\
               //! | `auth` | who | `wire` | `node` |\n\
               //! | `wire` | formats | — | all |\n\
               //! ## Next\n\
               pub mod node;\n\
               pub use node::config::Config;\n\
               pub use node::server::{Control, Server as S};\n";
    let rule = read_rule(lib);
    let exports = root_exports(lib, &rule);
    (rule, exports)
}

fn caught(path: &str, text: &str) -> Vec<(usize, String)> {
    let (rule, exports) = rule_for_cases();
    breaches(path, text, &rule, &exports)
        .into_iter()
        .map(|b| (b.line, b.to))
        .collect()
}

#[test]
fn the_checker_reads_the_table() {
    let (rule, exports) = rule_for_cases();
    assert_eq!(rule.len(), 5);
    assert!(rule["wire"].is_empty());
    assert_eq!(
        rule["broker"],
        ["delivery", "wire"].map(String::from).into()
    );
    assert_eq!(exports.get("Config").map(String::as_str), Some("node"));
    assert_eq!(exports.get("Control").map(String::as_str), Some("node"));
    assert_eq!(exports.get("S").map(String::as_str), Some("node"));
}

#[test]
fn the_checker_catches_every_way_up() {
    let node = |l| (l, "node".to_owned());
    // A use, an inline path, a re-export, a group.
    assert_eq!(
        caught("src/delivery/hub.rs", "use crate::node::handover::Step;\n"),
        [node(1)]
    );
    assert_eq!(
        caught(
            "src/delivery/hub.rs",
            "fn f() {\n    let s = crate::node::handover::SETTLE;\n}\n"
        ),
        [node(2)]
    );
    assert_eq!(
        caught("src/wire/sse.rs", "pub use crate::auth::jwt::Trust;\n"),
        [(1, "auth".to_owned())]
    );
    assert_eq!(
        caught(
            "src/delivery/stream.rs",
            "use crate::{wire::sse, broker::Broker};\n"
        ),
        [(1, "broker".to_owned())]
    );
    // A name the root re-exports from the node.
    assert_eq!(
        caught("src/broker/mod.rs", "fn f(c: &crate::Config) {}\n"),
        [node(1)]
    );
    // super::super out of the layer, from a file and from its tests module.
    assert_eq!(
        caught(
            "src/delivery/hub/ledger.rs",
            "use super::super::super::node::x;\n"
        ),
        [node(1)]
    );
    assert_eq!(
        caught(
            "src/delivery/stream.rs",
            "#[cfg(test)]\nmod tests {\n    use super::super::super::node::x;\n}\n"
        ),
        [node(3)]
    );
    // A top-level module no row places.
    assert_eq!(
        caught("src/wire/sse.rs", "use crate::config::X;\n"),
        [(1, "config (in no layer)".to_owned())]
    );
}

#[test]
fn the_checker_lets_down_and_sideways_pass_and_skips_prose() {
    let none: [(usize, String); 0] = [];
    let allowed = "use crate::wire::sse;\n\
                   use super::Ledger;\n\
                   use super::super::history::Cursor;\n\
                   use crate::delivery::hub::Hub;\n\
                   // crate::node::handover is who uses this\n\
                   /// See [`crate::node::shard`].\n\
                   /* crate::broker::x */\n\
                   const S: &str = \"crate::node::x\";\n\
                   const R: &str = r#\"crate::node::x\"#;\n\
                   const C: char = '{';\n\
                   fn f<'a>(x: &'a str) -> &'a str { x }\n\
                   #[cfg(test)]\nmod tests {\n    use super::*;\n    use super::super::topics;\n}\n";
    assert_eq!(caught("src/delivery/hub/ledger.rs", allowed), none);
    assert_eq!(
        caught(
            "src/node/shard.rs",
            "use crate::broker::Broker;\nuse crate::Config;\n"
        ),
        none
    );
    // The crate root may use everything.
    assert_eq!(
        caught("src/lib.rs", "pub use node::config::Config;\n"),
        none
    );
}

//! The crate's architecture, checked from its source text: no import loops
//! between the files of `src/`.
//!
//! Every `src/**/*.rs` file (except `main.rs`, a separate crate) is one node,
//! named by its module path (`src/a/b.rs` and `src/a/b/mod.rs` are `a::b`,
//! `src/lib.rs` is `crate`). Every `crate::…` and `super::…` path in the file,
//! in `use` items (grouped and nested braces included) or inline in code, is an
//! edge to the longest module path it names that exists as a file. Comments and
//! string literals are skipped, so doc links do not count.
//!
//! Choices:
//! - A file's references to its own descendants are not edges: a parent
//!   declares its children (`pub mod x;`) and re-exports from them as its face.
//! - `crate::Name` for a name that `lib.rs` re-exports (`pub use error::Result`)
//!   is an edge to the module that defines it, not to `lib.rs`.
//! - References inside `#[cfg(test)] mod tests` blocks count as ordinary edges
//!   (simplest, and a test that needs a module above it is a loop too).
//!
//! The strongly connected components of this graph (Tarjan) are the loops; the
//! test fails listing one cycle per edge inside each component. It also prints,
//! without failing, the files over 600 lines whose module doc does not say why
//! they are one cohesive thing (a `//!` line containing "cohesive").

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

/// Edges of known loops that the pipeline refactor is breaking, ignored here.
/// Each one starts in a file that refactor owns (`run.rs`, `capture/`, `lake/`,
/// `warehouse/`, `transform/models.rs`, `state.rs`).
/// To be removed by the pipeline refactor.
const KNOWN_CYCLE_EDGES: &[(&str, &str)] = &[];

/// Files longer than this should be one cohesive thing and say so.
const LONG_FILE_LINES: usize = 600;

/// One `src/` file.
struct SourceFile {
    path: PathBuf,
    module: String,
    text: String,
}

/// Where one edge was first seen: file line and the path as written.
#[derive(Clone)]
struct Reference {
    line: usize,
    path: String,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` → `a::b`; `src/lib.rs` → `crate`.
fn module_of(src: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts == ["lib"] {
        return "crate".to_string();
    }
    parts.join("::")
}

/// The source with comments, string and char literals blanked out (newlines
/// kept, so line numbers still hold).
fn strip(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let at = |j: usize| c.get(j).copied();
    let mut i = 0;
    while i < c.len() {
        if c[i] == '/' && at(i + 1) == Some('/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c[i] == '/' && at(i + 1) == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == Some('*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == Some('/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if c[i] == 'r'
            && (at(i + 1) == Some('"')
                || (at(i + 1) == Some('#') && matches!(at(i + 2), Some('"' | '#'))))
            && (i == 0 || !ident(c[i - 1]) || (c[i - 1] == 'b' && (i < 2 || !ident(c[i - 2]))))
        {
            // Raw string r"…" / r#"…"#.
            let mut hashes = 0;
            let mut j = i + 1;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            j += 1; // opening quote
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '"' && (0..hashes).all(|h| c.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            for &ch in &c[i..j.min(c.len())] {
                out.push(blank(ch));
            }
            i = j;
        } else if c[i] == '"' {
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < c.len() {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c[i] == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if at(i + 1) == Some('\\') {
                let mut j = i + 3;
                while j < c.len() && c[j] != '\'' {
                    j += 1;
                }
                for _ in i..=j.min(c.len() - 1) {
                    out.push(' ');
                }
                i = j + 1;
            } else if at(i + 2) == Some('\'') {
                out.push_str("   ");
                i += 3;
            } else {
                out.push('\'');
                i += 1;
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// Identifiers and the punctuation a path is made of, with their line numbers.
fn tokens(text: &str) -> Vec<(String, usize)> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push((c[start..i].iter().collect(), line));
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push(("::".to_string(), line));
            i += 2;
        } else if !ch.is_whitespace() {
            out.push((ch.to_string(), line));
            i += 1;
        } else {
            i += 1;
        }
    }
    out
}

/// Parses a path tree starting at `toks[*i]` (just after a `::`): segments,
/// `{ … }` groups (nested), `self`, `*`, `as x`. Every leaf is pushed to `out`
/// as `prefix` + its segments.
fn path_tree(
    toks: &[(String, usize)],
    i: &mut usize,
    prefix: &[String],
    out: &mut Vec<Vec<String>>,
) {
    let mut segs = prefix.to_vec();
    while *i < toks.len() {
        let t = toks[*i].0.as_str();
        if t == "{" {
            *i += 1;
            while *i < toks.len() && toks[*i].0 != "}" {
                path_tree(toks, i, &segs, out);
                if *i < toks.len() && toks[*i].0 == "," {
                    *i += 1;
                }
            }
            *i += 1; // `}`
            return;
        }
        if t == "*" || t == "self" {
            *i += 1;
        } else if t.chars().all(|ch| ch.is_alphanumeric() || ch == '_') {
            segs.push(t.to_string());
            *i += 1;
        }
        if *i < toks.len() && toks[*i].0 == "::" {
            *i += 1;
            continue;
        }
        break;
    }
    if *i + 1 < toks.len() && toks[*i].0 == "as" {
        *i += 2;
    }
    out.push(segs);
}

/// Every module-relative path (`crate::…`, `super::…`) in one file, made
/// absolute (without the leading `crate`), with its line.
fn references(file: &SourceFile) -> Vec<(Vec<String>, usize)> {
    let stripped = strip(&file.text);
    let toks = tokens(&stripped);
    let file_module: Vec<String> = if file.module == "crate" {
        Vec::new()
    } else {
        file.module.split("::").map(String::from).collect()
    };
    // Inline `mod name {` blocks: (name, brace depth at which it closes).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let (t, line) = (toks[i].0.as_str(), toks[i].1);
        match t {
            "mod" if toks.get(i + 2).is_some_and(|n| n.0 == "{") => {
                inline.push((toks[i + 1].0.clone(), depth));
                i += 2;
                continue;
            }
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|m| m.1 == depth) {
                    inline.pop();
                }
            }
            "crate" | "super" if toks.get(i + 1).is_some_and(|n| n.0 == "::") => {
                let mut base: Vec<String> = Vec::new();
                if t == "super" {
                    base = file_module.clone();
                    base.extend(inline.iter().map(|m| m.0.clone()));
                    base.pop();
                    let mut j = i + 2;
                    while toks.get(j).is_some_and(|n| n.0 == "super")
                        && toks.get(j + 1).is_some_and(|n| n.0 == "::")
                    {
                        base.pop();
                        j += 2;
                    }
                    i = j;
                } else {
                    i += 2;
                }
                let mut leaves = Vec::new();
                path_tree(&toks, &mut i, &base, &mut leaves);
                out.extend(leaves.into_iter().map(|l| (l, line)));
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Names that `lib.rs` re-exports (`pub use error::{Error, Result}`) → their
/// module.
fn root_reexports(lib: &SourceFile, modules: &BTreeSet<String>) -> BTreeMap<String, String> {
    let toks = tokens(&strip(&lib.text));
    let mut map = BTreeMap::new();
    let mut i = 0;
    while i < toks.len() {
        if toks[i].0 == "use" {
            i += 1;
            let mut leaves = Vec::new();
            path_tree(&toks, &mut i, &[], &mut leaves);
            for leaf in leaves {
                if let Some((module, rest)) = resolve(&leaf, modules) {
                    if let Some(name) = rest.last() {
                        map.insert(name.clone(), module);
                    }
                }
            }
        } else {
            i += 1;
        }
    }
    map
}

/// The longest prefix of `segs` that is a module file, and what follows it.
fn resolve(segs: &[String], modules: &BTreeSet<String>) -> Option<(String, Vec<String>)> {
    (1..=segs.len()).rev().find_map(|n| {
        let m = segs[..n].join("::");
        modules.contains(&m).then(|| (m, segs[n..].to_vec()))
    })
}

fn is_descendant(module: &str, of: &str) -> bool {
    of == "crate" || module.starts_with(&format!("{of}::"))
}

type Graph = BTreeMap<String, BTreeMap<String, Reference>>;

fn load() -> (Vec<SourceFile>, Graph) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    paths.sort();
    let files: Vec<SourceFile> = paths
        .into_iter()
        .filter(|p| p != &src.join("main.rs"))
        .map(|path| SourceFile {
            module: module_of(&src, &path),
            text: fs::read_to_string(&path).expect("read source"),
            path: path
                .strip_prefix(src.parent().unwrap())
                .unwrap()
                .to_path_buf(),
        })
        .collect();
    let modules: BTreeSet<String> = files.iter().map(|f| f.module.clone()).collect();
    let lib = files
        .iter()
        .find(|f| f.module == "crate")
        .expect("src/lib.rs");
    let reexports = root_reexports(lib, &modules);

    let mut graph = Graph::new();
    for file in &files {
        let edges = graph.entry(file.module.clone()).or_default();
        for (segs, line) in references(file) {
            let target = match resolve(&segs, &modules) {
                Some((m, _)) => m,
                None => match segs.first().and_then(|name| reexports.get(name)) {
                    Some(m) => m.clone(),
                    None => "crate".to_string(),
                },
            };
            if target == file.module || is_descendant(&target, &file.module) {
                continue;
            }
            edges.entry(target).or_insert_with(|| Reference {
                line,
                path: format!("crate::{}", segs.join("::")),
            });
        }
    }
    (files, graph)
}

/// Tarjan's strongly connected components; only those with two or more nodes.
fn components(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flat_map(|e| e.keys()) {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().expect("on stack");
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// The shortest path `from → … → to` using only nodes of `within`.
fn shortest_path(graph: &Graph, from: &str, to: &str, within: &BTreeSet<String>) -> Vec<String> {
    let mut prev: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = VecDeque::from([from.to_string()]);
    let mut seen = BTreeSet::from([from.to_string()]);
    while let Some(v) = queue.pop_front() {
        if v == to {
            let mut path = vec![v];
            while let Some(p) = prev.get(path.last().unwrap()) {
                path.push(p.clone());
            }
            path.reverse();
            return path;
        }
        for w in graph[&v].keys().filter(|w| within.contains(*w)) {
            if seen.insert(w.clone()) {
                prev.insert(w.clone(), v.clone());
                queue.push_back(w.clone());
            }
        }
    }
    unreachable!("{to} is in the same component as {from}")
}

#[test]
fn src_has_no_import_loops() {
    let (files, mut graph) = load();
    let file_of: BTreeMap<&str, &Path> = files
        .iter()
        .map(|f| (f.module.as_str(), f.path.as_path()))
        .collect();

    for (from, to) in KNOWN_CYCLE_EDGES {
        let removed = graph.get_mut(*from).and_then(|e| e.remove(*to));
        assert!(
            removed.is_some(),
            "KNOWN_CYCLE_EDGES lists {from} -> {to}, which no longer exists: remove it"
        );
    }

    let mut report = String::new();
    for component in components(&graph) {
        let within: BTreeSet<String> = component.iter().cloned().collect();
        report.push_str(&format!("\nLoop through {} files:\n", component.len()));
        for m in &component {
            report.push_str(&format!("  {m}  ({})\n", file_of[m.as_str()].display()));
        }
        // One shortest cycle per edge inside the component, each cycle once.
        let mut cycles = BTreeSet::new();
        for from in &component {
            for to in graph[from].keys().filter(|t| within.contains(*t)) {
                let mut cycle = vec![from.clone()];
                cycle.extend(shortest_path(&graph, to, from, &within));
                if cycles.insert(canonical(&cycle)) {
                    report.push_str(&format!("  cycle: {}\n", cycle.join(" -> ")));
                    for pair in cycle.windows(2) {
                        let r = &graph[&pair[0]][&pair[1]];
                        report.push_str(&format!(
                            "    {} -> {}: {} ({}:{})\n",
                            pair[0],
                            pair[1],
                            r.path,
                            file_of[pair[0].as_str()].display(),
                            r.line
                        ));
                    }
                }
            }
        }
    }

    // Long files: print only.
    for file in &files {
        let lines = file.text.lines().count();
        let doc: String = file
            .text
            .lines()
            .take_while(|l| l.starts_with("//!") || l.trim().is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if lines > LONG_FILE_LINES && !doc.to_lowercase().contains("cohesive") {
            println!(
                "{} has {lines} lines and its module doc does not say why it is one cohesive thing",
                file.path.display()
            );
        }
    }

    assert!(report.is_empty(), "import loops in src/:{report}");
}

/// A cycle `a -> b -> c -> a` rotated to start at its smallest node.
fn canonical(cycle: &[String]) -> Vec<String> {
    let body = &cycle[..cycle.len() - 1];
    let start = (0..body.len()).min_by_key(|&i| &body[i]).unwrap_or(0);
    body[start..]
        .iter()
        .chain(&body[..start])
        .cloned()
        .collect()
}

#[test]
fn references_cover_groups_inline_paths_and_super() {
    let file = SourceFile {
        path: PathBuf::from("src/a/b.rs"),
        module: "a::b".to_string(),
        text: r#"
            //! See [`crate::doc::Link`].
            use crate::{c::D, e::{f::G, H as I}, j};
            pub(crate) fn k() -> String {
                let s = "crate::in_string::X";
                crate::m::n(super::o::P, 'x', '\'');
                s.into()
            }
            #[cfg(test)]
            mod tests {
                use super::*;
                use super::super::q::R;
            }
        "#
        .to_string(),
    };
    let found: Vec<String> = references(&file)
        .into_iter()
        .map(|(segs, _)| segs.join("::"))
        .collect();
    assert_eq!(
        found,
        ["c::D", "e::f::G", "e::H", "j", "m::n", "a::o::P", "a::b", "a::q::R"]
    );
}

//! The layering of `vesim`, checked on its sources: the actors (the guest, the agent and
//! introcore) and the world that composes them import no module that imports them back; the
//! world's methods live in the world module; only the command line reaches into the command
//! line; iced-x86 stays behind the model's decoder adapter.
//!
//! A module's imports are the `crate::NAME` paths in its code (comments left out), so a
//! `use` and a full path count alike.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// Every `.rs` file under `dir`, in path order.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The file's code without `//` comments (doc comments included) and string contents.
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module of a file under `sim/src`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// Module -> the modules its code names as `crate::NAME`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = root().join("src");
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in sources(&src) {
        let m = module_of(&src, &f);
        let c = code(&fs::read_to_string(&f).unwrap());
        let entry = g.entry(m.clone()).or_default();
        for (i, _) in c.match_indices("crate::") {
            let before = c[..i].chars().last();
            if before.is_some_and(|ch| ch.is_alphanumeric() || ch == '_') {
                continue;
            }
            let name: String = c[i + 7..]
                .chars()
                .take_while(|ch| ch.is_alphanumeric() || *ch == '_')
                .collect();
            if !name.is_empty() && name != m {
                entry.insert(name);
            }
        }
    }
    g
}

/// Whether `to` is reachable from `from`.
fn reaches(g: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_string()];
    while let Some(m) = stack.pop() {
        for n in g.get(&m).into_iter().flatten() {
            if n == to {
                return true;
            }
            if seen.insert(n.clone()) {
                stack.push(n.clone());
            }
        }
    }
    false
}

#[test]
fn no_module_that_the_actors_or_the_world_import_imports_them_back() {
    let g = imports();
    for m in ["agent", "introcore", "guest", "world", "events", "abi"] {
        assert!(g.contains_key(m), "module {m} exists");
        assert!(
            !reaches(&g, m, m),
            "module {m} is on an import circle: {g:?}"
        );
    }
    for actor in ["agent", "introcore", "guest"] {
        assert!(
            !g[actor].contains("world"),
            "{actor} imports the world: {:?}",
            g[actor]
        );
    }
    // The agent and introcore share only the contract between them.
    assert!(!g["agent"].contains("introcore"), "{:?}", g["agent"]);
    assert!(!g["introcore"].contains("agent"), "{:?}", g["introcore"]);
}

#[test]
fn the_world_s_methods_live_in_the_world_module() {
    let src = root().join("src");
    let world = src.join("world");
    for f in sources(&src) {
        let c = code(&fs::read_to_string(&f).unwrap());
        let has = c.contains("impl World") || c.contains("impl crate::world::World");
        assert!(
            !has || f.starts_with(&world),
            "{} has an impl block of World",
            f.display()
        );
    }
}

#[test]
fn only_the_command_line_reaches_into_the_command_line() {
    let src = root().join("src");
    for f in sources(&src) {
        if f.starts_with(src.join("cli")) || f == src.join("main.rs") {
            continue;
        }
        let c = code(&fs::read_to_string(&f).unwrap());
        assert!(
            !c.contains("crate::cli") && !c.contains("vesim::cli"),
            "{} uses the command line",
            f.display()
        );
    }
}

#[test]
fn iced_x86_stays_behind_the_model_s_decoder_adapter() {
    let manifest = fs::read_to_string(root().join("Cargo.toml")).unwrap();
    assert!(!manifest.contains("iced"), "sim/Cargo.toml names iced-x86");
    let model = root().join("../model/src");
    let adapter = model.join("cpu/decode.rs");
    for f in sources(&root().join("src"))
        .into_iter()
        .chain(sources(&model))
    {
        if f == adapter {
            continue;
        }
        let c = code(&fs::read_to_string(&f).unwrap());
        assert!(!c.contains("iced_x86"), "{} uses iced-x86", f.display());
    }
}

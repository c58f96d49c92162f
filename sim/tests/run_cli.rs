//! The `vesim run` contract through the binary: the JSON object and its figures, `--ve on`,
//! `off` and `both`, the text table, argument errors and byte-identical reruns (apart from the
//! wall-clock speed).
//!
//! The figures of paper-synthetic are worked out by hand from the scenario's definition
//! (`vesim::workload`: a protected process maps `pages` pages from `USER_BASE`, hooking each
//! page's translation right after mapping it, then changes each page's caching attributes
//! `changes` times) and from the spec (B14 CPUID, B75 cache adds, B76 evictions, B139
//! monitored bits):
//!
//! - All pages lie in one page table. Page 0's map writes the PML4E, PDPTE, PDE and PTE
//!   (nothing is monitored yet); its hook then monitors those four tables. Each later page's
//!   map writes one PTE into the monitored page table. So `pt_writes` = 3 + pages +
//!   pages × changes, and pages − 1 + pages × changes of them hit a monitored table.
//! - #VE off: each of those is an EPT-violation exit, and nothing else exits.
//! - #VE on: each is a PT-write #VE and there is no EPT-violation exit. A caching change
//!   touches PWT/PCD only, not a monitored bit: ignored as irrelevant. Page 1's PTE (0 → present,
//!   relevant, unmonitored, not cached) is raised (one VMCALL); introcore then caches it and
//!   the next 7 unmonitored entries (B75), so pages 2.. (up to 8) find their PTE cached
//!   (page 1's hook evicts only its own entry, B76). Exits: the one-time CPUID (B14) and the
//!   VMCALL.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on a broken binary

mod common;

use common::vesim;
use serde_json::Value;

const PAGES: u64 = 4;
const CHANGES: u64 = 10;
const BASE: [&str; 7] = [
    "run",
    "--builtin",
    "paper-synthetic",
    "--set",
    "pages=4",
    "--set",
    "changes=10",
];

fn run_json(ve: &str) -> Value {
    let mut a = BASE.to_vec();
    a.extend_from_slice(&["--ve", ve, "--json"]);
    let r = vesim(&a);
    assert_eq!(r.code, 0, "{a:?}: {}", r.stderr);
    assert_eq!(r.stdout.lines().count(), 1, "one JSON object on one line");
    serde_json::from_str(&r.stdout).expect("stdout is one JSON object")
}

/// The keys every run carries.
const RUN_KEYS: [&str; 14] = [
    "pt_writes",
    "vm_exits_total",
    "ept_violation_exits",
    "ve_delivered",
    "ve_page_walk",
    "ve_pt_write",
    "agent_raised",
    "agent_ignored_irrelevant",
    "agent_ignored_cache",
    "agent_emulated_by_introcore",
    "agent_rejected",
    "vmcalls",
    "cache_lookups",
    "cache_hits",
];

fn figure(run: &Value, key: &str) -> u64 {
    run[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is an unsigned integer in {run}"))
}

/// The expected figures (see the module documentation).
fn expected(ve: bool) -> Vec<(&'static str, u64)> {
    let pt_writes = 3 + PAGES + PAGES * CHANGES;
    let monitored_writes = PAGES - 1 + PAGES * CHANGES;
    if ve {
        vec![
            ("pt_writes", pt_writes),
            ("vm_exits_total", 2),
            ("ept_violation_exits", 0),
            ("ve_delivered", monitored_writes),
            ("ve_page_walk", 0),
            ("ve_pt_write", monitored_writes),
            ("agent_raised", 1),
            ("agent_ignored_irrelevant", PAGES * CHANGES),
            ("agent_ignored_cache", PAGES - 2),
            ("agent_emulated_by_introcore", 0),
            ("agent_rejected", 0),
            ("vmcalls", 1),
            ("cache_lookups", PAGES - 1),
            ("cache_hits", PAGES - 2),
        ]
    } else {
        vec![
            ("pt_writes", pt_writes),
            ("vm_exits_total", monitored_writes),
            ("ept_violation_exits", monitored_writes),
            ("ve_delivered", 0),
            ("ve_page_walk", 0),
            ("ve_pt_write", 0),
            ("agent_raised", 0),
            ("agent_ignored_irrelevant", 0),
            ("agent_ignored_cache", 0),
            ("agent_emulated_by_introcore", 0),
            ("agent_rejected", 0),
            ("vmcalls", 0),
            ("cache_lookups", 0),
            ("cache_hits", 0),
        ]
    }
}

fn check_run(run: &Value, ve: bool) {
    for k in RUN_KEYS {
        figure(run, k);
    }
    for (k, want) in expected(ve) {
        assert_eq!(
            figure(run, k),
            want,
            "{k} with #VE {}",
            if ve { "on" } else { "off" }
        );
    }
    // VE-SEMANTICS section 3: the identities between the figures.
    assert_eq!(
        figure(run, "ve_delivered"),
        figure(run, "ve_page_walk") + figure(run, "ve_pt_write")
    );
    assert_eq!(
        figure(run, "ve_pt_write"),
        [
            "agent_raised",
            "agent_ignored_irrelevant",
            "agent_ignored_cache",
            "agent_emulated_by_introcore",
            "agent_rejected",
        ]
        .iter()
        .map(|k| figure(run, k))
        .sum::<u64>()
    );
    assert!(figure(run, "cache_hits") <= figure(run, "cache_lookups"));
}

#[test]
fn json_both_has_the_contract_shape_and_hand_worked_figures() {
    let v = run_json("both");
    assert_eq!(v["scenario"], "paper-synthetic");
    assert_eq!(v["seed"], 0);
    let runs = v["runs"].as_object().expect("runs is an object");
    let mut names: Vec<&str> = runs.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["ve_off", "ve_on"]);
    check_run(&v["runs"]["ve_on"], true);
    check_run(&v["runs"]["ve_off"], false);
    if let Some(saved) = v.get("exits_saved") {
        let off = figure(&v["runs"]["ve_off"], "vm_exits_total") as i64;
        let on = figure(&v["runs"]["ve_on"], "vm_exits_total") as i64;
        assert_eq!(saved.as_i64(), Some(off - on), "exits saved = off − on");
    }
}

#[test]
fn json_ve_on_and_off_give_only_that_run() {
    for (mode, name, ve) in [("on", "ve_on", true), ("off", "ve_off", false)] {
        let v = run_json(mode);
        assert_eq!(v["scenario"], "paper-synthetic");
        assert_eq!(v["seed"], 0);
        let runs = v["runs"].as_object().expect("runs is an object");
        let names: Vec<&str> = runs.keys().map(String::as_str).collect();
        assert_eq!(names, [name], "--ve {mode}");
        check_run(&v["runs"][name], ve);
    }
}

#[test]
fn json_seed_is_echoed() {
    let mut a = BASE.to_vec();
    a.extend_from_slice(&["--seed", "7", "--json"]);
    let r = vesim(&a);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["seed"], 7);
    // Nothing in this scenario draws a random number: the figures do not move.
    check_run(&v["runs"]["ve_on"], true);
    check_run(&v["runs"]["ve_off"], false);
}

#[test]
fn text_form_has_both_columns_and_an_exits_saved_line() {
    let r = vesim(&BASE);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    let header = r
        .stdout
        .lines()
        .find(|l| l.contains("ve_on"))
        .expect("a header line with the ve_on column");
    assert!(header.contains("ve_off"), "{header}");
    assert!(
        header.find("ve_on") < header.find("ve_off"),
        "ve_on comes first: {header}"
    );
    let pt = r
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some("pt_writes"))
        .expect("a pt_writes row");
    let cols: Vec<&str> = pt.split_whitespace().collect();
    let want = (3 + PAGES + PAGES * CHANGES).to_string();
    assert_eq!(cols, ["pt_writes", want.as_str(), want.as_str()]);
    let saved: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.contains("exits saved"))
        .collect();
    assert_eq!(saved.len(), 1, "{}", r.stdout);
    // 2 exits with #VE on, pages − 1 + pages × changes with it off.
    let off = PAGES - 1 + PAGES * CHANGES;
    assert!(
        saved[0].contains(&format!(": {} ", off - 2)),
        "the saved count: {}",
        saved[0]
    );
}

#[test]
fn text_form_with_one_run_has_no_exits_saved_line() {
    for mode in ["on", "off"] {
        let mut a = BASE.to_vec();
        a.extend_from_slice(&["--ve", mode]);
        let r = vesim(&a);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let other = if mode == "on" { "ve_off" } else { "ve_on" };
        assert!(!r.stdout.contains(other), "--ve {mode}: {}", r.stdout);
        assert!(
            !r.stdout.contains("exits saved"),
            "--ve {mode}: {}",
            r.stdout
        );
    }
}

#[test]
fn bad_arguments_exit_2_with_one_line_and_no_stdout() {
    let cases: [&[&str]; 9] = [
        &["run", "--builtin", "no-such-scenario"],
        &["run", "--builtin", "paper-synthetic", "--set", "frobs=1"],
        &["run", "--builtin", "paper-synthetic", "--set", "pages=0"],
        &["run", "--builtin", "paper-synthetic", "--set", "pages=4097"],
        &["run", "--builtin", "paper-synthetic", "--set", "pat=2"],
        &[
            "run",
            "--builtin",
            "paper-synthetic",
            "--set",
            "changes=100001",
        ],
        &[
            "run",
            "--builtin",
            "paper-synthetic",
            "--set",
            "pages=4",
            "--set",
            "pages=5",
        ],
        &["run", "--builtin", "paper-synthetic", "--ve", "maybe"],
        &["run", "--builtin", "paper-synthetic", "--set", "pages"],
    ];
    for args in cases {
        let r = vesim(args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{args:?}: stdout {:?}", r.stdout);
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {:?}", r.stderr);
        assert!(r.stderr.starts_with("vesim: "), "{args:?}: {:?}", r.stderr);
    }
}

#[test]
fn bad_argument_messages_name_the_culprit() {
    let r = vesim(&["run", "--builtin", "no-such-scenario"]);
    assert!(r.stderr.contains("no-such-scenario"), "{}", r.stderr);
    let r = vesim(&["run", "--builtin", "paper-synthetic", "--set", "frobs=1"]);
    assert!(r.stderr.contains("frobs"), "{}", r.stderr);
    let r = vesim(&["run", "--builtin", "paper-synthetic", "--set", "pages=0"]);
    assert!(r.stderr.contains("pages"), "{}", r.stderr);
    let r = vesim(&[
        "run",
        "--builtin",
        "paper-synthetic",
        "--set",
        "pages=4",
        "--set",
        "pages=5",
    ]);
    assert!(r.stderr.contains("pages"), "{}", r.stderr);
    let r = vesim(&["run", "--builtin", "paper-synthetic", "--ve", "maybe"]);
    assert!(r.stderr.contains("maybe"), "{}", r.stderr);
}

/// Everything but the wall-clock speed (the `speed` lines of the text form, the "perf" key of
/// the JSON), which is reported apart and never hashed.
fn without_wall_clock(stdout: &str) -> String {
    if let Ok(mut v) = serde_json::from_str::<Value>(stdout) {
        if let Some(m) = v.as_object_mut() {
            assert!(m.remove("perf").is_some(), "the JSON has a perf key");
        }
        return v.to_string();
    }
    stdout
        .lines()
        .filter(|l| !l.starts_with("speed "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_same_command_twice_gives_byte_identical_stdout() {
    let mut json = BASE.to_vec();
    json.extend_from_slice(&["--ve", "both", "--json"]);
    for args in [BASE.to_vec(), json] {
        let a = vesim(&args);
        let b = vesim(&args);
        assert_eq!(a.code, 0, "{}", a.stderr);
        assert!(!a.stdout.is_empty());
        assert_eq!(
            without_wall_clock(&a.stdout),
            without_wall_clock(&b.stdout),
            "{args:?}"
        );
    }
}

/// The default run (`vesim run`, no arguments): desktop-mix on 4 VCPUs, both runs; most of
/// the page-table #VEs are handled in the guest (VE-SEMANTICS section 3: page walks set plus
/// the two ignored outcomes), every #VE-off PT exit is an EPT-violation exit, the hit rate is
/// hits over lookups, and the text form has the per-reason exits and the hit rate.
#[test]
fn the_default_run_filters_most_page_table_violations_in_the_guest() {
    let r = vesim(&["run", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["scenario"], "desktop-mix");
    assert_eq!(v["params"]["vcpus"], 4);
    let on = &v["runs"]["ve_on"];
    let in_guest = figure(on, "agent_page_walk_set")
        + figure(on, "agent_ignored_irrelevant")
        + figure(on, "agent_ignored_cache");
    assert_eq!(figure(on, "ve_handled_in_guest"), in_guest);
    assert!(2 * in_guest > figure(on, "ve_delivered"), "{on}");
    let rate = on["cache_hit_rate"].as_f64().unwrap();
    let want = figure(on, "cache_hits") as f64 / figure(on, "cache_lookups") as f64;
    assert!((rate - want).abs() < 1e-12);
    assert!(v["runs"]["ve_off"]["cache_hit_rate"].is_null());
    let t = vesim(&["run"]);
    assert_eq!(t.code, 0, "{}", t.stderr);
    assert!(t.stdout.contains("exits_48_ept_violation"), "{}", t.stdout);
    assert!(t.stdout.contains("cache_hit_rate"), "{}", t.stdout);
    assert!(t.stdout.contains("handled in the guest"), "{}", t.stdout);
}

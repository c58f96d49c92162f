//! `vesim explore`: the schedule counts against the closed-form count of interleavings, a
//! planted narrow race that the explorer finds and random schedules of the same budget miss,
//! the failing schedule as a trace that `replay` and `minimize` accept, determinism, and bad
//! input.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::vesim;
use std::collections::BTreeMap;
use vesim::explore::{explore, ExploreWorld, Options, Report, SCHEDULE_STEPS_MAX};
use vesim::quirks::Quirks;
use vesim::runner::Checked;
use vesim::sched::Schedule;

fn world(text: &str) -> ExploreWorld {
    ExploreWorld::parse("test.toml", text, &BTreeMap::new()).unwrap()
}

fn options(k: u32) -> Options {
    Options {
        preemptions: k,
        max_schedules: 1_000_000,
        steps_max: SCHEDULE_STEPS_MAX,
    }
}

fn run(w: &ExploreWorld, quirks: Quirks, k: u32) -> Report {
    explore(w, quirks, &options(k), 1, &|_| {}).unwrap()
}

fn binomial(n: u64, k: u64) -> u64 {
    if k > n {
        return 0;
    }
    (0..k).fold(1, |acc, i| acc * (n - i) / (i + 1))
}

/// Interleavings of `a` steps of one VCPU and `b` of another with exactly `p` preemptions: the
/// schedules of `p + 2` alternating blocks (the last switch comes when a VCPU has finished, so
/// it is free), starting with either VCPU; a VCPU with `k` blocks splits its steps in
/// `C(steps - 1, k - 1)` ways.
fn interleavings(a: u64, b: u64, p: u64) -> u64 {
    let m = p + 2;
    let (first, second) = (m.div_ceil(2), m / 2);
    binomial(a - 1, first - 1) * binomial(b - 1, second - 1)
        + binomial(b - 1, first - 1) * binomial(a - 1, second - 1)
}

/// Two unprotected processes, one per VCPU: no #VE, no shared lock, so each VCPU takes the
/// same number of steps in every schedule.
const INDEPENDENT: &str = r#"
builtin = "desktop-mix"
processes = [false, false]
ops = [
  "0 map pid=0 va=0x100000000 flags=0x2",
  "0 map pid=0 va=0x100001000 flags=0x2",
  "1 map pid=1 va=0x100000000 flags=0x2",
]
[params]
vcpus = 2
processes = 2
kpti = 0
"#;

/// Each VCPU's steps when it runs alone to the end: taken from the ordinary runner, not the
/// explorer.
fn solo_steps(w: &ExploreWorld, quirks: Quirks) -> Vec<u64> {
    let setup = w.setup(quirks, Schedule::List(vec![(0, 1_000_000)]));
    let run = vesim::runner::run(&setup, &w.scenario);
    assert_eq!(run.checked, Checked::Passed);
    let mut steps = vec![0; w.vcpus()];
    for (cpu, n) in run.runs {
        steps[cpu] += n;
    }
    steps
}

#[test]
fn schedule_counts_equal_the_closed_form_count_of_interleavings() {
    let w = world(INDEPENDENT);
    let quirks = Quirks::fixed();
    let steps = solo_steps(&w, quirks);
    assert!(steps.iter().all(|s| *s > 3), "{steps:?}");
    let r = run(&w, quirks, 3);
    assert_eq!(r.failure, None);
    assert!(!r.cut);
    for l in &r.levels {
        assert_eq!(
            l.schedules,
            interleavings(steps[0], steps[1], u64::from(l.preemptions)),
            "{} preemptions, steps {steps:?}",
            l.preemptions
        );
    }
    assert_eq!(
        r.schedules,
        r.levels.iter().map(|l| l.schedules).sum::<u64>()
    );
    // Different orders of the two processes' allocations end in different frames.
    assert!(r.states > 1);
}

#[test]
fn three_vcpus_without_preemption_run_in_every_order() {
    let w = world(
        r#"
builtin = "desktop-mix"
processes = [false, false, false]
ops = [
  "0 map pid=0 va=0x100000000 flags=0x2",
  "1 map pid=1 va=0x100000000 flags=0x2",
  "2 map pid=2 va=0x100000000 flags=0x2",
]
[params]
vcpus = 3
processes = 3
kpti = 0
"#,
    );
    let r = run(&w, Quirks::fixed(), 0);
    // Non-preemptive: a VCPU runs to its end, then any of the rest may go: 3! orders.
    assert_eq!(r.schedules, 6);
}

/// Q16 with a one-step window: the hook must land in the single step between the unload
/// request and the unloader.
const NARROW: &str = r#"
builtin = "unload-race"
processes = [true]
ops = [
  "0 map pid=0 va=0x100001000 flags=0x2",
  "0 hook pid=0 va=0x100000000",
  "0 protect pid=0 va=0x100001000 writable=0 executable=1",
  "0 unload delay=1",
  "1 hook pid=0 va=0x100001000",
]
[params]
vcpus = 2
processes = 1
kpti = 0
"#;

#[test]
fn a_narrow_race_is_found_that_random_schedules_of_the_same_budget_miss() {
    let w = world(NARROW);
    let hvmi = Quirks::hvmi();
    let r = run(&w, hvmi, 1);
    let f = r.failure.clone().expect("the explorer finds the race");
    assert_eq!(f.preemptions, 1);
    assert!(
        matches!(&f.checked, Checked::Failed(v) if v.invariant.to_string() == "I7"),
        "{:?}",
        f.checked
    );
    // The failing schedule replays to the same failure through the ordinary runner.
    let again = vesim::runner::run(&w.setup(hvmi, f.schedule()), &w.scenario);
    assert_eq!(again.checked, f.checked);
    // Random schedules, as many as the explorer ran, never hit the window.
    for seed in 0..r.runs {
        let run = vesim::runner::run(&w.setup(hvmi, Schedule::Random { seed }), &w.scenario);
        assert_eq!(run.checked, Checked::Passed, "random:{seed}");
    }
    // Without Q16 no schedule fails.
    let r = run(&w, Quirks::fixed(), 2);
    assert_eq!(r.failure, None);
    assert!(r.schedules > 10);
}

#[test]
fn the_failing_schedule_is_a_trace_replay_and_minimize_accept() {
    let dir = std::env::temp_dir().join(format!("vesim-explore-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("q16.trace");
    let t = trace.to_str().unwrap();
    let args = [
        "explore",
        "--builtin",
        "unload-hook",
        "--profile",
        "hvmi",
        "--preemptions",
        "1",
        "--trace",
        t,
    ];
    let r = vesim(&args);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("fails (1 preemption): I7"),
        "{}",
        r.stdout
    );
    let schedule = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("schedule "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let text = std::fs::read_to_string(&trace).unwrap();
    assert!(text.contains(&format!("schedule {schedule}\n")), "{text}");
    let replay = vesim(&["replay", t]);
    assert_eq!(replay.code, 0, "{}{}", replay.stdout, replay.stderr);
    let small = dir.join("q16.min");
    let m = vesim(&["minimize", t, "--out", small.to_str().unwrap(), "--json"]);
    assert_eq!(m.code, 0, "{}{}", m.stdout, m.stderr);
    assert!(m.stdout.contains("\"invariant\":\"I7\""), "{}", m.stdout);
    // The same command gives the same bytes.
    std::fs::remove_file(&trace).unwrap();
    let again = vesim(&args);
    assert_eq!(again.stdout, r.stdout);
    assert_eq!(std::fs::read_to_string(&trace).unwrap(), text);
    let j1 = vesim(&["explore", "--builtin", "cache-race", "--json"]);
    let j2 = vesim(&["explore", "--builtin", "cache-race", "--json"]);
    assert_eq!(j1.code, 0, "{}{}", j1.stdout, j1.stderr);
    assert_eq!(j1.stdout, j2.stdout);
    let v: serde_json::Value = serde_json::from_str(&j1.stdout).unwrap();
    assert_eq!(v["failure"], serde_json::Value::Null);
    assert_eq!(v["cut"], false);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bound_that_ends_the_search_is_reported() {
    let r = vesim(&[
        "explore",
        "--builtin",
        "cache-race",
        "--preemptions",
        "1",
        "--max-schedules",
        "5",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("schedules 5,"), "{}", r.stdout);
    assert!(
        r.stdout.contains("--max-schedules ended the search"),
        "{}",
        r.stdout
    );
}

#[test]
fn bad_input_is_one_sentence_and_exit_2() {
    let dir = std::env::temp_dir().join(format!("vesim-explore-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let four = dir.join("four.toml");
    std::fs::write(
        &four,
        "builtin = \"desktop-mix\"\nops = []\n[params]\nvcpus = 4\n",
    )
    .unwrap();
    let garbage = dir.join("garbage.toml");
    std::fs::write(&garbage, "builtin = [\n").unwrap();
    let op = dir.join("op.toml");
    std::fs::write(
        &op,
        "builtin = \"desktop-mix\"\nprocesses = [true]\nops = [\"5 map pid=0 va=0x1000 flags=0x2\"]\n[params]\nvcpus = 2\n",
    )
    .unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["explore", "--builtin", "nosuch"],
            "not a built-in small world",
        ),
        (vec!["explore"], "name a world"),
        (vec!["explore", four.to_str().unwrap()], "at most 3"),
        (vec!["explore", garbage.to_str().unwrap()], "garbage.toml:"),
        (vec!["explore", op.to_str().unwrap()], "VCPU 5"),
        (
            vec!["explore", "--builtin", "cache-race", "--preemptions", "9"],
            "0 to 8",
        ),
        (
            vec![
                "explore",
                "--builtin",
                "cache-race",
                "--preemptions",
                "4",
                "--max-schedules",
                "3",
            ],
            "--max-schedules",
        ),
        (
            vec!["explore", "--builtin", "cache-race", "--set", "vcpus=9"],
            "9 VCPUs; exploration supports at most 3",
        ),
    ];
    for (args, says) in cases {
        let r = vesim(&args);
        assert_eq!(r.code, 2, "{args:?}: {}{}", r.stdout, r.stderr);
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {}", r.stderr);
        assert!(lines[0].starts_with("vesim: "), "{args:?}: {}", r.stderr);
        assert!(lines[0].contains(says), "{args:?}: {}", r.stderr);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_b77_window_is_a_real_miss_that_i1_excuses() {
    let w = ExploreWorld::builtin("cache-race", &BTreeMap::new()).unwrap();
    let entry = vesim_model::Gpa(0x0200_3008);
    // VCPU 0's agent looks the entry up (a hit: the first protect cached it), VCPU 1 hooks it
    // (placement and eviction), VCPU 0's agent stores: the relevant write reaches no callback.
    let schedule: Schedule = "list:0x40,1,0".parse().unwrap();
    let setup = w.setup(Quirks::fixed(), schedule.clone());
    let mut world = vesim::runner::world(&setup, &w.scenario, true).unwrap();
    world.events.keep(true);
    let run = vesim::runner::run_world(&mut world, &w.scenario, &schedule, 42, None);
    assert_eq!(run.checked, Checked::Passed, "the window is excused");
    let monitored = {
        let mut v = Vec::new();
        world.intro.ptm.for_each_monitored(|e| v.push(e));
        v
    };
    assert!(monitored.contains(&entry), "the entry is monitored now");
    let value = world.machine.mem.read_u64(entry);
    assert_eq!(value & 2, 2, "the second protect stored RW");
    let callbacks = world
        .events
        .held()
        .iter()
        .filter(|e| matches!(e, vesim::events::Event::Callback(r) if r.entry == entry && r.new == value))
        .count();
    assert_eq!(
        callbacks, 0,
        "the store was filtered by the cache: a missed VMCALL"
    );
    // The hook placed before VCPU 0's agent reaches its lookup evicts first: the lookup
    // misses, the write raises and the callback comes.
    let early: Schedule = "list:0x30,1,0".parse().unwrap();
    let mut world = vesim::runner::world(&setup, &w.scenario, true).unwrap();
    world.events.keep(true);
    let run = vesim::runner::run_world(&mut world, &w.scenario, &early, 1000, None);
    assert_eq!(run.checked, Checked::Passed);
    let value = world.machine.mem.read_u64(entry);
    assert!(world.events.held().iter().any(
        |e| matches!(e, vesim::events::Event::Callback(r) if r.entry == entry && r.new == value)
    ));
}

#[test]
fn the_report_does_not_depend_on_the_jobs() {
    for (name, quirks, k) in [
        ("two-writers", Quirks::fixed(), 1),
        ("unload-hook", Quirks::hvmi(), 1),
        ("remap-agent", Quirks::fixed(), 1),
    ] {
        let w = ExploreWorld::builtin(name, &BTreeMap::new()).unwrap();
        let one = explore(&w, quirks, &options(k), 1, &|_| {}).unwrap();
        let two = explore(&w, quirks, &options(k), 2, &|_| {}).unwrap();
        assert_eq!(one, two, "{name}");
        let cut = Options {
            max_schedules: 7,
            ..options(k)
        };
        let one = explore(&w, quirks, &cut, 1, &|_| {}).unwrap();
        let three = explore(&w, quirks, &cut, 3, &|_| {}).unwrap();
        assert_eq!(one, three, "{name}, cut at 7");
    }
}

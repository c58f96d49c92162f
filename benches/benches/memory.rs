//! Peak memory (the kernel's VmHWM, resident high-water mark) of runs whose length grows 100
//! times: `vesim check` over 1 000 and 100 000 seeds of desktop-mix, and `vesim run
//! --builtin paper-synthetic --set pages=10` with 1 000 and 100 000 caching changes per page.
//! Each run is a fresh process (this binary re-executed), so one run's memory does not hide
//! another's.
//!
//! `cargo bench -p vesim-benches --bench memory` (about 15 minutes on 2 cores: the 100 000-seed
//! sweep dominates). `-- --quick` runs 1 000 vs 10 000 seeds instead.

#![allow(clippy::expect_used)]

use std::process::Command;

fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        // The child: run the vesim command line given after --child, then report VmHWM.
        let mut cmd = vec!["vesim".to_string()];
        cmd.extend(args[i + 1..].iter().cloned());
        let code = vesim::cli::run_from(cmd);
        eprintln!("VmHWM {}", vm_hwm_kib().unwrap_or(0));
        std::process::exit(if code == std::process::ExitCode::SUCCESS {
            0
        } else {
            1
        });
    }
    let quick = args.iter().any(|a| a == "--quick");
    let big_seeds = if quick { "10000" } else { "100000" };
    // Each pair: the command, then its last argument small and large.
    let check = "check --builtin desktop-mix --jobs 2 --quiet --seeds";
    let run = "run --builtin paper-synthetic --ve on --set pages=10 --set";
    let pairs = [
        ("check desktop-mix, seeds", check, "1000", big_seeds),
        (
            "run paper-synthetic pages=10, changes",
            run,
            "changes=1000",
            "changes=100000",
        ),
    ];
    let exe = std::env::current_exe().expect("this binary's path");
    println!(
        "{:<40} {:>12} {:>12} {:>12} {:>8}",
        "peak memory (VmHWM)", "small", "KiB", "large", "KiB"
    );
    for (what, base, small_arg, large_arg) in pairs {
        let with =
            |last: &'static str| -> Vec<&'static str> { base.split(' ').chain([last]).collect() };
        let (small, large) = (with(small_arg), with(large_arg));
        let measure = |a: &[&str]| -> u64 {
            let o = Command::new(&exe)
                .arg("--child")
                .args(a)
                .output()
                .expect("the child runs");
            let err = String::from_utf8_lossy(&o.stderr);
            err.lines()
                .find_map(|l| l.strip_prefix("VmHWM "))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{a:?}: no VmHWM in {err}"))
        };
        let (a, b) = (measure(&small), measure(&large));
        let n = |v: &[&str]| {
            v.last()
                .copied()
                .unwrap_or("")
                .trim_start_matches("changes=")
                .to_string()
        };
        println!(
            "{what:<40} {:>12} {a:>12} {:>12} {b:>8}   large/small {:.2}",
            n(&small),
            n(&large),
            b as f64 / a as f64
        );
    }
}

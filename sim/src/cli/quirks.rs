//! `vesim quirks`: the quirk report ([`crate::quirk_report`]).

use super::EXIT_USAGE;
use crate::quirk_report::{report, Row};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

const EXAMPLES: &str = "\
Examples:
  vesim quirks
  vesim quirks --json --out /tmp/quirks
  vesim replay --check corpus/quirks/Q5.trace

For each quirk switch, vesim searches the directed scenarios, then seeded swarm runs of the
built-ins, for a world in which `fixed` plus that one switch fails an invariant while `fixed`
passes the same operations under the same schedule. What it finds is shrunk and written to
OUT/Qn.trace (the header's quirks line names the switch). A switch that breaks nothing is
costed instead. Every quirk of HVMI-BEHAVIOURS section Q, and Q31, gets a row.

Exit status: 0 when the report was made, 2 when a trace cannot be written.";

/// Arguments of `vesim quirks`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct QuirksArgs {
    /// Print one JSON object {"quirks": [{"quirk", "description", "invariant", "switches",
    /// "trace", "operations", "vcpus", "preemptions", "replay", "cost", "costs", "note"},
    /// ...]}, null where a field does not apply.
    #[arg(long)]
    json: bool,
    /// Where the traces go.
    #[arg(long, value_name = "DIR", default_value = "corpus/quirks")]
    out: PathBuf,
    /// Quirks searched at a time.
    #[arg(long, default_value_t = 2, value_name = "N")]
    jobs: u32,
}

fn cell(s: &str, width: usize) -> String {
    let mut t: String = s.chars().take(width).collect();
    while t.chars().count() < width {
        t.push(' ');
    }
    t
}

fn print_table(rows: &[Row]) {
    outln!(
        "{} {} {} {} replay / cost / why not",
        cell("quirk", 5),
        cell("invariant", 9),
        cell("ops", 4),
        cell("description", 58),
    );
    for r in rows {
        let inv = match (r.invariant, r.switches.len()) {
            (Some(i), n) if n > 1 => format!("{i} +{}", r.switches.first().copied().unwrap_or("")),
            (Some(i), _) => i.to_string(),
            (None, _) => "-".to_string(),
        };
        let ops = r.operations.map_or("-".to_string(), |n| n.to_string());
        let last = match (&r.replay, &r.cost) {
            (Some(c), _) => c.clone(),
            (None, Some(c)) => format!("cost: {}", c.text()),
            (None, None) => r.note.clone(),
        };
        outln!(
            "{} {} {} {} {last}",
            cell(r.quirk, 5),
            cell(&inv, 9),
            cell(&ops, 4),
            cell(r.description, 58),
        );
    }
    let broken = rows.iter().filter(|r| r.invariant.is_some()).count();
    let paired = rows.iter().filter(|r| r.switches.len() > 1).count();
    let costed = rows
        .iter()
        .filter(|r| r.cost.is_some() && r.invariant.is_none())
        .count();
    let switches = crate::quirks::QUIRK_NAMES.len();
    outln!(
        "{broken} quirks break an invariant ({paired} of them with Q1 on too), {costed} only \
         cost, {} switches change nothing measured, {} quirks have no switch",
        switches - broken - costed,
        rows.len() - switches
    );
}

/// Runs `vesim quirks`.
pub fn run(args: QuirksArgs) -> ExitCode {
    if args.jobs == 0 || u64::from(args.jobs) > super::check::JOBS_MAX {
        errln!(
            "vesim: --jobs takes 1 to {}, not {}.",
            super::check::JOBS_MAX,
            args.jobs
        );
        return ExitCode::from(EXIT_USAGE);
    }
    // The directory is made if missing, but not its parents; a file there is refused.
    let shown = args.out.display();
    if args.out.exists() && !args.out.is_dir() {
        errln!("vesim: {shown} is a file, not a directory.");
        return ExitCode::from(EXIT_USAGE);
    }
    let parent = match args.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        errln!(
            "vesim: {shown} cannot be made: its directory {} does not exist.",
            parent.display()
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let rows = match report(&args.out, args.jobs as usize) {
        Ok(r) => r,
        Err(e) => {
            errln!("vesim: {e}.");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if args.json {
        let v: Vec<serde_json::Value> = rows.iter().map(Row::json).collect();
        outln!("{}", serde_json::json!({ "quirks": v }));
    } else {
        print_table(&rows);
    }
    ExitCode::SUCCESS
}

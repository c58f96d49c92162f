//! `vesim agent`: one #VE through the agent (a stable public contract; see README).

use super::{parse_hex_bytes, parse_u64, EXIT_USAGE};
use crate::quirks::Profile;
use crate::verdict::{level_name, run as run_verdict, Verdict, VerdictRequest};
use clap::Args;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::process::ExitCode;
use vesim_model::vcpu::Gpr;

fn hex_bytes(s: &str) -> Result<super::exec::HexBytes, String> {
    parse_hex_bytes(s).map(super::exec::HexBytes)
}

fn reg_value(s: &str) -> Result<(Gpr, u64), String> {
    super::exec::reg_value(s)
}

fn cs_value(s: &str) -> Result<u16, String> {
    let v = parse_u64(s)?;
    u16::try_from(v).map_err(|_| format!("'{s}' is not a 16-bit selector"))
}

const EXAMPLES: &str = "\
Examples:
  vesim agent --bytes 488918 --reg rax=0xfffff68000001008 --reg rbx=0x2003 --old 0x1003
      mov [rax], rbx changes the PFN of a present entry: raised to introcore
  vesim agent --bytes 488918 --reg rax=0xfffff68000001008 --reg rbx=0x1063 --old 0x1003
      only A and D change: ignored_irrelevant
  vesim agent --bytes 488918 --reg rax=0xfffff68000001008 --reg rbx=0x2003 --old 0x1003 --cached --json
      relevant, but the entry is known to be unmonitored: ignored_cache
  vesim agent --bytes 480118 --reg rax=0xfffff68000001008 --reg rbx=1 --old 0x1003 --profile hvmi
      ADD is not emulated: rejected (and in hvmi the #VE would repeat forever)

Exit status: 0 when a verdict is printed, 2 for bad arguments.";

/// Arguments of `vesim agent`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct AgentArgs {
    /// The faulting instruction, as hex bytes.
    #[arg(long, value_name = "HEX", value_parser = hex_bytes)]
    bytes: super::exec::HexBytes,
    /// Sets a register (rax ... r15); the others are 0, RSP defaults to a kernel stack address.
    #[arg(long = "reg", value_name = "NAME=VALUE", value_parser = reg_value)]
    regs: Vec<(Gpr, u64)>,
    /// RFLAGS: only CF PF AF ZF SF OF DF IF may be set; bit 1 is forced on.
    #[arg(long, value_name = "VALUE", value_parser = parse_u64, default_value = "0x2")]
    rflags: u64,
    /// Linear address of the instruction.
    #[arg(long, value_name = "VALUE", value_parser = parse_u64, default_value = "0x400000")]
    rip: u64,
    /// The entry's value before the write.
    #[arg(long, value_name = "VALUE", value_parser = parse_u64)]
    old: u64,
    /// Linear address of the entry (default: the address the instruction writes).
    #[arg(long, value_name = "ADDR", value_parser = parse_u64)]
    gla: Option<u64>,
    /// The saved CS (default 0x10).
    #[arg(long, value_name = "VALUE", value_parser = cs_value, default_value = "0x10")]
    cs: u16,
    /// The entry's GPA is in the agent cache.
    #[arg(long, conflicts_with = "monitored")]
    cached: bool,
    /// Introcore monitors the entry.
    #[arg(long)]
    monitored: bool,
    /// Quirk profile.
    #[arg(long, value_name = "fixed|hvmi", default_value = "fixed")]
    profile: Profile,
    /// Also map the page after RIP's page (filled with INT3); by default only the pages the
    /// instruction's bytes lie on are mapped.
    #[arg(long)]
    map_next_page: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn hex(v: u64) -> Value {
    Value::String(format!("{v:#x}"))
}

fn opt_hex(v: Option<u64>) -> Value {
    v.map_or(Value::Null, hex)
}

/// The JSON object of `vesim agent --json`.
pub fn to_json(v: &Verdict) -> Value {
    let mut m = Map::new();
    m.insert(
        "ok".into(),
        Value::Bool(v.outcome.is_some() && v.stop.is_none()),
    );
    m.insert(
        "outcome".into(),
        v.outcome.map_or(Value::Null, |o| Value::from(o.name())),
    );
    m.insert(
        "reason".into(),
        v.reason.map_or(Value::Null, |r| Value::from(r.name())),
    );
    m.insert("old".into(), opt_hex(v.old));
    m.insert("new".into(), opt_hex(v.new));
    m.insert("entry".into(), hex(v.entry));
    m.insert("rip".into(), hex(v.rip));
    m.insert("rflags".into(), hex(v.rflags));
    let regs: Map<String, Value> = Gpr::ALL
        .iter()
        .map(|g| (g.name().to_string(), hex(v.regs[*g as usize])))
        .collect();
    m.insert("regs".into(), Value::Object(regs));
    let calls: Vec<Value> = v
        .vmcalls
        .iter()
        .map(|(rdx, rbx, rcx)| {
            let mut c = Map::new();
            c.insert("rdx".into(), hex(*rdx));
            c.insert("rbx".into(), hex(*rbx));
            c.insert("rcx".into(), hex(*rcx));
            Value::Object(c)
        })
        .collect();
    m.insert("vmcalls".into(), Value::Array(calls));
    m.insert("vm_exits".into(), Value::from(v.vm_exits));
    m.insert("gla".into(), hex(v.gla));
    m.insert("gpa".into(), hex(v.gpa));
    if let Some((level, va)) = v.names {
        let mut n = Map::new();
        n.insert(
            "level".into(),
            Value::from(level_name(level).to_lowercase()),
        );
        n.insert("va".into(), hex(va));
        m.insert("names".into(), Value::Object(n));
    }
    if let Some(s) = &v.stop {
        m.insert("stop".into(), Value::from(s.clone()));
    }
    Value::Object(m)
}

/// The readable form.
pub fn to_text(v: &Verdict) -> String {
    let mut out = String::new();
    let outcome = v.outcome.map_or("none", |o| o.name());
    match v.reason {
        Some(r) => out.push_str(&format!("outcome    {outcome} ({})\n", r.name())),
        None => out.push_str(&format!("outcome    {outcome}\n")),
    }
    let show = |x: Option<u64>| x.map_or("-".to_string(), |x| format!("{x:#x}"));
    match v.names {
        Some((level, va)) => out.push_str(&format!(
            "entry      gla {:#x}  gpa {:#x}  ({} of {va:#x})\n",
            v.gla,
            v.gpa,
            level_name(level)
        )),
        None => out.push_str(&format!("entry      gla {:#x}  gpa {:#x}\n", v.gla, v.gpa)),
    }
    out.push_str(&format!("old        {}\n", show(v.old)));
    out.push_str(&format!("new        {}\n", show(v.new)));
    out.push_str(&format!("entry now  {:#x}\n", v.entry));
    out.push_str(&format!("rip        {:#x}\n", v.rip));
    out.push_str(&format!("rflags     {:#x}\n", v.rflags));
    for pair in Gpr::ALL.chunks(2) {
        let cols: Vec<String> = pair
            .iter()
            .map(|g| format!("{:<4} {:#018x}", g.name(), v.regs[*g as usize]))
            .collect();
        out.push_str(&format!("{}\n", cols.join("    ")));
    }
    for (rdx, rbx, rcx) in &v.vmcalls {
        out.push_str(&format!(
            "vmcall     rdx {rdx:#x} rbx {rbx:#x} rcx {rcx:#x}\n"
        ));
    }
    out.push_str(&format!("vm exits   {}\n", v.vm_exits));
    if let Some(s) = &v.stop {
        out.push_str(&format!("stopped    {s}\n"));
    }
    out
}

/// Runs `vesim agent`.
pub fn run(args: AgentArgs) -> ExitCode {
    let mut regs = BTreeMap::new();
    for (r, v) in args.regs {
        if regs.insert(r, v).is_some() {
            errln!("vesim: register {} is given twice.", r.name());
            return ExitCode::from(EXIT_USAGE);
        }
    }
    let req = VerdictRequest {
        bytes: args.bytes.0,
        regs,
        rflags: args.rflags,
        rip: args.rip,
        old: args.old,
        gla: args.gla,
        cs: args.cs,
        cached: args.cached,
        monitored: args.monitored,
        profile: args.profile,
        map_next_page: args.map_next_page,
    };
    let v = match run_verdict(&req) {
        Ok(v) => v,
        Err(e) => {
            errln!("vesim: {e}.");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if args.json {
        outln!("{}", to_json(&v));
    } else {
        out!("{}", to_text(&v));
    }
    ExitCode::SUCCESS
}

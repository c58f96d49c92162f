//! `vesim exec`: one instruction on the reference CPU (a stable public contract; see README).

use super::{parse_hex_bytes, parse_u64, EXIT_USAGE};
use crate::exec::{run as run_exec, ExecReport, ExecRequest};
use clap::Args;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::process::ExitCode;
use vesim_model::vcpu::Gpr;
use vesim_model::Outcome;

/// Instruction bytes given as hex.
#[derive(Clone, Debug)]
pub struct HexBytes(pub Vec<u8>);

fn hex_bytes(s: &str) -> Result<HexBytes, String> {
    parse_hex_bytes(s).map(HexBytes)
}

pub(crate) fn reg_value(s: &str) -> Result<(Gpr, u64), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not NAME=VALUE"))?;
    let reg = Gpr::from_name(&name.trim().to_ascii_lowercase()).ok_or_else(|| {
        format!("'{name}' is not one of rax rcx rdx rbx rsp rbp rsi rdi r8 ... r15")
    })?;
    Ok((reg, parse_u64(value)?))
}

fn mem_value(s: &str) -> Result<(u64, u64), String> {
    let (addr, value) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not ADDR=VALUE"))?;
    Ok((parse_u64(addr)?, parse_u64(value)?))
}

const EXAMPLES: &str = "\
Examples:
  vesim exec --bytes f0480fab18 --reg rax=0x10000 --reg rbx=3 --mem 0x10000=0x8
      lock bts qword ptr [rax],rbx
  vesim exec --bytes 48ab --reg rdi=0x20000 --reg rax=0x8000000000000063 --rflags 0x402 --mem 0x20000=0 --json
      stosq with DF set: writes [0x20000] and leaves rdi = 0x1fff8
  vesim exec --bytes 0f01d4 --reg rcx=1
      vmfunc to an EPTP-list entry that is not valid: a VM exit (59)

Exit status: 0 executed, 1 not executed, 2 bad arguments.";

/// Arguments of `vesim exec`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct ExecArgs {
    /// The instruction, as hex bytes (one complete instruction; bytes after it are ignored).
    #[arg(long, value_name = "HEX", value_parser = hex_bytes)]
    bytes: HexBytes,
    /// Sets a register (rax rcx rdx rbx rsp rbp rsi rdi r8 ... r15); the others are 0.
    #[arg(long = "reg", value_name = "NAME=VALUE", value_parser = reg_value)]
    regs: Vec<(Gpr, u64)>,
    /// RFLAGS: only CF PF AF ZF SF OF DF IF may be set; bit 1 is forced on.
    #[arg(long, value_name = "VALUE", value_parser = parse_u64, default_value = "0x2")]
    rflags: u64,
    /// Sets the 8-byte cell at a canonical, 8-aligned linear address before execution.
    #[arg(long = "mem", value_name = "ADDR=VALUE", value_parser = mem_value)]
    mem: Vec<(u64, u64)>,
    /// Linear address of the instruction.
    #[arg(long, value_name = "VALUE", value_parser = parse_u64, default_value = "0x400000")]
    rip: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn usage_error(msg: &str) -> ExitCode {
    errln!("vesim: {msg}");
    ExitCode::from(EXIT_USAGE)
}

fn hex(v: u64) -> Value {
    Value::String(format!("{v:#x}"))
}

/// The one-sentence explanation of an outcome that is not "executed".
fn explain(o: &Outcome, mnemonic: &str) -> String {
    match o {
        Outcome::Executed => format!("{mnemonic} executed."),
        Outcome::PageFault { error_code, cr2 } => format!(
            "The access to linear address {cr2} raised a page fault with error code {:#x}.",
            error_code.bits()
        ),
        Outcome::GeneralProtection { error_code } => {
            format!("The instruction raised a general-protection fault with error code {error_code:#x}.")
        }
        Outcome::StackFault => "The stack access at a non-canonical address raised a stack fault.".into(),
        Outcome::InvalidOpcode => "The instruction raised an invalid-opcode exception (#UD).".into(),
        Outcome::EptViolation { violation, .. } => format!(
            "The access to guest-physical address {} caused an EPT violation with qualification {:#x}.",
            violation.gpa,
            violation.qualification.bits()
        ),
        Outcome::VeDelivered(v) | Outcome::VeExit(v) => format!(
            "The access to guest-physical address {} caused a virtualization exception with qualification {:#x}.",
            v.gpa,
            v.qualification.bits()
        ),
        Outcome::EptMisconfig { gpa } => {
            format!("The access to guest-physical address {gpa} hit an EPT misconfiguration.")
        }
        Outcome::DoubleFault => "Event delivery faulted and raised a double fault.".into(),
        Outcome::Vmcall => "VMCALL exits to the hypervisor (exit reason 18).".into(),
        Outcome::VmfuncExit { function, index } => format!(
            "VMFUNC function {function:#x} with index {index:#x} exits to the hypervisor (exit reason 59)."
        ),
        Outcome::VmExit(r) => format!(
            "{mnemonic} exits to the hypervisor (exit reason {}).",
            r.code()
        ),
        Outcome::Unsupported { mnemonic } => {
            format!("{mnemonic} performed its memory accesses but is outside the reference CPU's instruction set.")
        }
    }
}

fn details(o: &Outcome, m: &mut Map<String, Value>) {
    match o {
        Outcome::PageFault { error_code, cr2 } => {
            m.insert("error_code".into(), hex(error_code.bits().into()));
            m.insert("cr2".into(), hex(cr2.0));
        }
        Outcome::GeneralProtection { error_code } => {
            m.insert("error_code".into(), hex((*error_code).into()));
        }
        Outcome::EptViolation { violation: v, .. }
        | Outcome::VeDelivered(v)
        | Outcome::VeExit(v) => {
            m.insert("qualification".into(), hex(v.qualification.bits()));
            m.insert("gpa".into(), hex(v.gpa.0));
            m.insert("gla".into(), hex(v.gla.0));
        }
        Outcome::EptMisconfig { gpa } => {
            m.insert("gpa".into(), hex(gpa.0));
        }
        Outcome::VmfuncExit { function, index } => {
            m.insert("function".into(), hex((*function).into()));
            m.insert("index".into(), hex((*index).into()));
        }
        Outcome::VmExit(r) => {
            m.insert("exit_reason".into(), Value::from(r.code()));
        }
        _ => {}
    }
    if let Some(r) = o.exit_reason() {
        if !matches!(o, Outcome::VmExit(_)) {
            m.insert("exit_reason".into(), Value::from(r.code()));
        }
    }
}

/// The JSON object of `vesim exec --json`.
pub fn to_json(r: &ExecReport) -> Value {
    let mut m = Map::new();
    let executed = r.outcome == Outcome::Executed;
    m.insert("ok".into(), Value::Bool(executed));
    m.insert("outcome".into(), Value::from(r.outcome.name()));
    if executed {
        m.insert("mnemonic".into(), Value::from(r.mnemonic.clone()));
        m.insert("length".into(), Value::from(r.length));
        m.insert("rip".into(), hex(r.rip));
        m.insert("rflags".into(), hex(r.rflags));
        let regs: Map<String, Value> = Gpr::ALL
            .iter()
            .map(|g| (g.name().to_string(), hex(r.regs[*g as usize])))
            .collect();
        m.insert("regs".into(), Value::Object(regs));
        let mem: Map<String, Value> = r
            .mem
            .iter()
            .map(|(a, v)| (format!("{a:#x}"), hex(*v)))
            .collect();
        m.insert("mem".into(), Value::Object(mem));
    } else {
        m.insert(
            "error".into(),
            Value::from(explain(&r.outcome, &r.mnemonic)),
        );
        if let Outcome::Unsupported { mnemonic } = &r.outcome {
            m.insert("mnemonic".into(), Value::from(mnemonic.clone()));
        }
        details(&r.outcome, &mut m);
    }
    Value::Object(m)
}

fn flag_names(rflags: u64) -> String {
    const NAMES: [(u64, &str); 8] = [
        (1 << 0, "CF"),
        (1 << 2, "PF"),
        (1 << 4, "AF"),
        (1 << 6, "ZF"),
        (1 << 7, "SF"),
        (1 << 9, "IF"),
        (1 << 10, "DF"),
        (1 << 11, "OF"),
    ];
    let set: Vec<&str> = NAMES
        .iter()
        .filter(|(b, _)| rflags & b != 0)
        .map(|(_, n)| *n)
        .collect();
    set.join(" ")
}

/// The readable form.
pub fn to_text(r: &ExecReport) -> String {
    let mut out = String::new();
    if r.outcome == Outcome::Executed {
        out.push_str(&format!("executed   {}   ({} bytes)\n", r.text, r.length));
        out.push_str(&format!("rip        {:#x}\n", r.rip));
        out.push_str(&format!(
            "rflags     {:#x} [{}]\n",
            r.rflags,
            flag_names(r.rflags)
        ));
        for pair in Gpr::ALL.chunks(2) {
            let cols: Vec<String> = pair
                .iter()
                .map(|g| format!("{:<4} {:#018x}", g.name(), r.regs[*g as usize]))
                .collect();
            out.push_str(&format!("{}\n", cols.join("    ")));
        }
        if !r.mem.is_empty() {
            out.push_str("memory\n");
            for (a, v) in &r.mem {
                out.push_str(&format!("  {a:#x} = {v:#x}\n"));
            }
        }
    } else {
        out.push_str(&format!(
            "not executed: {}   {}\n",
            r.outcome.name(),
            r.text
        ));
        out.push_str(&explain(&r.outcome, &r.mnemonic));
        out.push('\n');
        let mut m = Map::new();
        details(&r.outcome, &mut m);
        for (k, v) in m {
            let v = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            out.push_str(&format!("{k:<14} {v}\n"));
        }
    }
    out
}

/// Runs `vesim exec`.
pub fn run(args: ExecArgs) -> ExitCode {
    let mut regs = BTreeMap::new();
    for (r, v) in args.regs {
        if regs.insert(r, v).is_some() {
            return usage_error(&format!("register {} is given twice.", r.name()));
        }
    }
    let mut mem = BTreeMap::new();
    for (a, v) in args.mem {
        if mem.insert(a, v).is_some() {
            return usage_error(&format!("memory cell {a:#x} is given twice."));
        }
    }
    let req = ExecRequest {
        bytes: args.bytes.0,
        regs,
        rflags: args.rflags,
        mem,
        rip: args.rip,
    };
    let report = match run_exec(&req) {
        Ok(r) => r,
        Err(e) => return usage_error(&format!("{e}.")),
    };
    if args.json {
        outln!("{}", to_json(&report));
    } else {
        out!("{}", to_text(&report));
    }
    if report.outcome == Outcome::Executed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

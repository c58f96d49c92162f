//! One #VE through the agent: the engine behind `vesim agent`.
//!
//! One VCPU, the agent deployed, #VE on. The #VE is synthesized as the CPU would deliver it for
//! a write to the entry at the GLA: reason 48, qualification 0x1AA for a plain write (MOV,
//! STOS) or 0x1AB for a read-modify-write (XCHG, CMPXCHG, OR/AND/XOR, BT*), the GLA and the
//! GPA, then vector 20 through the IDT with the given registers, RFLAGS, RIP and saved CS. The
//! entry lives in a page-table page at [`layout::VERDICT_PT_FRAME`] (GPA = frame + (GLA &
//! 0xFFF)), which carries one introcore monitor on the entry 256 slots away so that it is
//! write-protected and convertible, as the page of a monitored translation is.

use crate::agent::decoder;
use crate::agent::{AgentOutcome, RejectReason};
use crate::layout;
use crate::quirks::Profile;
use crate::world::{Event, Reusable, Stop, World, WorldConfig};
use std::collections::BTreeMap;
use vesim_model::cpu::decode::{self, Decoded, MAX_INSTRUCTION_LEN};
use vesim_model::ept::EptQualification;
use vesim_model::exit::EptViolation;
use vesim_model::paging::PteFlags;
use vesim_model::vcpu::{Gpr, Rflags, Vcpu};
use vesim_model::ve_info::{VeInfo, REASON_EPT_VIOLATION, SEMAPHORE_BUSY};
use vesim_model::VcpuId;
use vesim_model::{Gla, Gpa};

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerdictRequest {
    /// Instruction bytes.
    pub bytes: Vec<u8>,
    /// Registers (others 0; RSP defaults to [`layout::VERDICT_DEFAULT_RSP`]).
    pub regs: BTreeMap<Gpr, u64>,
    /// RFLAGS.
    pub rflags: u64,
    /// RIP.
    pub rip: u64,
    /// The entry's value before the write.
    pub old: u64,
    /// The GLA of the entry; default: the reference CPU's first memory access.
    pub gla: Option<u64>,
    /// The saved CS.
    pub cs: u16,
    /// Put the entry's GPA in the agent cache.
    pub cached: bool,
    /// Place an introcore monitor on the entry.
    pub monitored: bool,
    /// The profile.
    pub profile: Profile,
    /// Also map the page after the one holding RIP, filled with INT3 (0xCC), so that a byte
    /// the agent should not fetch is visible. The pages the instruction's bytes lie on are
    /// always mapped.
    pub map_next_page: bool,
}

impl Default for VerdictRequest {
    fn default() -> Self {
        VerdictRequest {
            bytes: Vec::new(),
            regs: BTreeMap::new(),
            rflags: 0x2,
            rip: layout::VERDICT_DEFAULT_RIP,
            old: 0,
            gla: None,
            cs: layout::KERNEL_CS,
            cached: false,
            monitored: false,
            profile: Profile::Fixed,
            map_next_page: false,
        }
    }
}

/// Bad requests; each message is one sentence.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerdictError {
    /// No bytes.
    #[error("--bytes is empty")]
    NoBytes,
    /// The instruction has no memory operand and no --gla was given.
    #[error("the instruction has no memory operand, so --gla is required")]
    NoGla,
    /// A non-canonical address.
    #[error("{0} {1:#x} is not a canonical address")]
    NotCanonical(&'static str, u64),
    /// The instruction would run past the canonical range.
    #[error("the instruction at --rip {0:#x} runs past the end of the canonical address range")]
    RipWraps(u64),
    /// The GLA overlaps the instruction.
    #[error("the entry at {0:#x} overlaps the instruction bytes")]
    GlaOverlapsCode(u64),
    /// The GLA is within 256 bytes below RSP.
    #[error("the entry at {0:#x} lies within 256 bytes below RSP, where the #VE frame goes")]
    GlaOnStack(u64),
    /// The GLA is in a region the guest model uses.
    #[error("the entry at {0:#x} lies in {1}, which the guest model uses")]
    GlaReserved(u64, &'static str),
    /// The self-map GLA names an entry the guest model depends on.
    #[error("the entry at {gla:#x} is the {level} of {va:#x}, which maps {what}, and the guest model depends on it")]
    EntryInUse {
        /// The self-map address.
        gla: u64,
        /// PTE, PDE, PDPTE or PML4E.
        level: &'static str,
        /// The first address the entry translates.
        va: u64,
        /// What it maps.
        what: &'static str,
    },
    /// The self-map GLA names the self-map entry.
    #[error("the entry at {0:#x} is the self-map entry (PML4E {1:#x}), which the guest model depends on")]
    SelfMapEntry(u64, u64),
    /// RIP or RSP in a reserved region.
    #[error("{0} {1:#x} lies in a page the guest model already uses")]
    Reserved(&'static str, u64),
    /// RFLAGS bits outside the settable set.
    #[error("--rflags {0:#x} sets bits other than CF PF AF ZF SF OF DF IF")]
    BadRflags(u64),
    /// World construction failed.
    #[error("the simulated machine could not be built: {0}")]
    World(String),
}

/// The verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Outcome (None if the agent stopped before deciding).
    pub outcome: Option<AgentOutcome>,
    /// Rejection reason for refusals.
    pub reason: Option<RejectReason>,
    /// Old value read.
    pub old: Option<u64>,
    /// New value computed.
    pub new: Option<u64>,
    /// The entry after the #VE.
    pub entry: u64,
    /// RIP after the agent returned.
    pub rip: u64,
    /// RFLAGS after.
    pub rflags: u64,
    /// Registers after.
    pub regs: [u64; 16],
    /// VMCALLs (rdx, rbx, rcx).
    pub vmcalls: Vec<(u64, u64, u64)>,
    /// VM exits.
    pub vm_exits: u64,
    /// Why the VCPU stopped, if the agent did not return.
    pub stop: Option<String>,
    /// The GLA and GPA used.
    pub gla: u64,
    /// GPA of the entry.
    pub gpa: u64,
    /// For a GLA in the self-map: the entry it names, as (level, first address translated),
    /// level 1 = PTE ... 4 = PML4E.
    pub names: Option<(u8, u64)>,
}

/// The name of a paging-structure level (1 = PTE ... 4 = PML4E).
pub fn level_name(level: u8) -> &'static str {
    match level {
        1 => "PTE",
        2 => "PDE",
        3 => "PDPTE",
        _ => "PML4E",
    }
}

/// The pages of the guest model the #VE depends on, by name: (name, start, length).
const MODEL_REGIONS: [(&str, u64, u64); 5] = [
    ("the IDT", layout::IDT_GVA, 0x1000),
    ("OS code", layout::OS_VE_HANDLER_GVA, 0x1000),
    ("OS code", layout::MM_CODE_GVA, 0x1000),
    (
        "the kernel stacks",
        layout::KERNEL_STACKS_GVA,
        layout::KERNEL_STACK_STRIDE,
    ),
    ("the agent", layout::AGENT_GVA, layout::AGENT_SIZE),
];

/// Whether [a, a + alen) and [b, b + blen) share a byte (ranges may end at 2^64).
fn overlaps(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    let (a, b) = (u128::from(a), u128::from(b));
    a < b + u128::from(blen) && b < a + u128::from(alen)
}

/// The world every verdict starts from: one VCPU, the agent deployed, in `profile`.
fn base_world(profile: Profile) -> Result<World, VerdictError> {
    World::new(WorldConfig {
        quirks: profile.quirks(),
        ..WorldConfig::default()
    })
    .map_err(|e| VerdictError::World(e.to_string()))
}

thread_local! {
    /// Per profile (index 1: `hvmi`), the base world of this thread's verdicts: built on first
    /// use (deploying the agent costs more than a #VE) and reset to its snapshot between
    /// verdicts, in time proportional to what the previous one changed.
    static BASES: std::cell::RefCell<[Option<Result<Reusable, String>>; 2]> =
        const { std::cell::RefCell::new([None, None]) };
}

/// Runs `case` on the base world of `profile` as it was built.
fn with_base<R>(
    profile: Profile,
    case: impl FnOnce(&mut World) -> Result<R, VerdictError>,
) -> Result<R, VerdictError> {
    let stale = |e: crate::world::SnapshotError| VerdictError::World(e.to_string());
    BASES.with(|cell| {
        let Ok(mut bases) = cell.try_borrow_mut() else {
            // A verdict inside a verdict (from a caller's closure): a world of its own.
            return Reusable::new(base_world(profile)?)
                .run(case)
                .map_err(stale)?;
        };
        let slot = &mut bases[usize::from(profile == Profile::Hvmi)];
        let built = || match base_world(profile) {
            Ok(w) => Ok(Reusable::new(w)),
            Err(VerdictError::World(e)) => Err(e),
            Err(e) => Err(e.to_string()),
        };
        match slot.get_or_insert_with(built) {
            Ok(base) => base.run(case).map_err(stale)?,
            Err(e) => Err(VerdictError::World(e.clone())),
        }
    })
}

/// Builds the world, synthesizes the #VE and runs the agent until it returns.
pub fn run(req: &VerdictRequest) -> Result<Verdict, VerdictError> {
    run_observed(req, |_| (), |(), _, _| ()).map(|(v, ())| v)
}

/// [`run`], calling `before` with the world as the write found it (the entry, the code and
/// the stack in place, just before the #VE is delivered) and `after` with what `before`
/// returned, the verdict and the world after the agent returned, for oracles that compare the
/// two. The world is marked at
/// the base world's snapshot, so [`vesim_model::memory::GuestMemory::dirtied`] lists every
/// frame the request and the agent wrote.
pub fn run_observed<B, R>(
    req: &VerdictRequest,
    before: impl FnOnce(&World) -> B,
    after: impl FnOnce(B, &Verdict, &World) -> R,
) -> Result<(Verdict, R), VerdictError> {
    with_base(req.profile, |w| observe(w, req, before, after))
}

fn observe<B, R>(
    w: &mut World,
    req: &VerdictRequest,
    before: impl FnOnce(&World) -> B,
    after: impl FnOnce(B, &Verdict, &World) -> R,
) -> Result<(Verdict, R), VerdictError> {
    if req.bytes.is_empty() {
        return Err(VerdictError::NoBytes);
    }
    if req.rflags & !(crate::exec::SETTABLE_RFLAGS | Rflags::FIXED1).bits() != 0 {
        return Err(VerdictError::BadRflags(req.rflags));
    }
    if !Gla(req.rip).is_canonical() {
        return Err(VerdictError::NotCanonical("--rip", req.rip));
    }
    let rsp = req
        .regs
        .get(&Gpr::Rsp)
        .copied()
        .unwrap_or(layout::VERDICT_DEFAULT_RSP);
    if !Gla(rsp).is_canonical() || !Gla(rsp.wrapping_sub(0x1000)).is_canonical() {
        return Err(VerdictError::NotCanonical("RSP", rsp));
    }
    let code_len = req.bytes.len().min(MAX_INSTRUCTION_LEN);
    let code = &req.bytes[..code_len];
    let mut probe = Vcpu::new_long_mode(0);
    probe.rip = req.rip;
    for (r, v) in &req.regs {
        probe.set_reg(*r, *v);
    }
    probe.set_reg(Gpr::Rsp, rsp);
    probe.rflags = Rflags::from_bits_retain(req.rflags) | Rflags::FIXED1;
    let first = decode::first_access(code, &probe);
    let gla = match (req.gla, first) {
        (Some(g), _) => g,
        (None, Some((g, _, _))) => g.0,
        (None, None) => return Err(VerdictError::NoGla),
    };
    if !Gla(gla).is_canonical() {
        return Err(VerdictError::NotCanonical("--gla", gla));
    }
    let rmw = first.is_some_and(|(_, _, w)| w) && {
        let a = decoder::analyze(code, req.rip).ok();
        a.is_some_and(|a| {
            !matches!(
                a.form,
                decoder::Form::Mov | decoder::Form::Stos | decoder::Form::Other
            )
        })
    };
    let length = match decode::decode(code, req.rip) {
        Decoded::Ok(_) => decode::describe(code, req.rip)
            .map(|d| d.0)
            .unwrap_or(code_len),
        _ => code_len,
    };
    let last = req.rip.wrapping_add(length as u64 - 1);
    if last < req.rip || !Gla(last).is_canonical() {
        return Err(VerdictError::RipWraps(req.rip));
    }
    if overlaps(gla, 8, req.rip, length as u64) {
        return Err(VerdictError::GlaOverlapsCode(gla));
    }
    if overlaps(gla, 8, rsp.wrapping_sub(256), 256) {
        return Err(VerdictError::GlaOnStack(gla));
    }
    // The page the instruction, RSP or the entry may not lie in, by name. For a self-map GLA
    // the entry it names is judged instead (`names`).
    let self_map = layout::DEFAULT_SELF_MAP_INDEX;
    let reserved = |a: u64| -> Option<&'static str> {
        if (a >> 39) & 0x1FF == self_map {
            return Some("the self-map");
        }
        MODEL_REGIONS
            .iter()
            .find(|(_, start, len)| a.wrapping_sub(*start) < *len)
            .map(|r| r.0)
    };
    let code_page = req.rip & !0xFFF;
    let next_page = code_page.wrapping_add(0x1000);
    let code_end = if req.map_next_page {
        next_page
    } else {
        last & !0xFFF
    };
    let names = vesim_model::paging::self_map_target(self_map, Gla(gla));
    if let Some((level, va)) = names {
        if level == 4 && (gla >> 3) & 0x1FF == self_map {
            return Err(VerdictError::SelfMapEntry(gla, self_map));
        }
        let span = 1u64 << (12 + 9 * (u32::from(level) - 1));
        let request = [
            (
                "the instruction",
                code_page,
                code_end.wrapping_sub(code_page) + 0x1000,
            ),
            ("the stack", rsp.wrapping_sub(0x1000) & !0xFFF, 0x2000),
        ];
        if let Some((what, _, _)) = MODEL_REGIONS
            .iter()
            .chain(&request)
            .find(|(_, start, len)| overlaps(va.0, span, *start, *len))
        {
            return Err(VerdictError::EntryInUse {
                gla,
                level: level_name(level),
                va: va.0,
                what,
            });
        }
    } else if let Some(what) = reserved(gla) {
        return Err(VerdictError::GlaReserved(gla, what));
    }
    for (what, a) in [("--rip", req.rip), ("--rip", last)] {
        if reserved(a).is_some() {
            return Err(VerdictError::Reserved(what, a));
        }
    }
    let err = |e: crate::guest::GuestError| VerdictError::World(e.to_string());
    let kernel_rw = PteFlags::WRITABLE;
    // Code pages and the stack pages (RSP's page and the one below), unless the guest has them.
    let mut pages = vec![code_page, last & !0xFFF];
    if req.map_next_page {
        if !Gla(next_page).is_canonical() || next_page == 0 {
            return Err(VerdictError::RipWraps(req.rip));
        }
        if let Some(what) = reserved(next_page) {
            return Err(VerdictError::GlaReserved(next_page, what));
        }
        pages.push(next_page);
    }
    for p in [rsp & !0xFFF, rsp.wrapping_sub(0x1000) & !0xFFF] {
        if reserved(p).is_none() {
            pages.push(p);
        }
    }
    pages.sort_unstable();
    pages.dedup();
    for p in pages {
        if p == gla & !0xFFF {
            return Err(VerdictError::GlaOverlapsCode(gla));
        }
        if w.guest.phys(&w.machine, p).is_none() {
            let g = w.guest.map_new(&mut w.machine, p, kernel_rw).map_err(err)?;
            if req.map_next_page && p == next_page {
                w.machine.mem.write(g, &[0xCC; 0x1000]);
            }
        }
    }
    // The page-table page holding the entry: for a self-map GLA, the kernel's table of the
    // entry's level for the address it translates (placed at the verdict frame if the guest
    // has none), reached through the self-map; otherwise the verdict frame, mapped at the GLA.
    let table = match names {
        Some((level, va)) => w
            .guest
            .place_table(&mut w.machine, va.0, level, layout::VERDICT_PT_FRAME)
            .map_err(err)?,
        None => {
            w.guest
                .map_at(
                    &mut w.machine,
                    gla & !0xFFF,
                    layout::VERDICT_PT_FRAME,
                    kernel_rw | PteFlags::NO_EXECUTE,
                )
                .map_err(err)?;
            layout::VERDICT_PT_FRAME
        }
    };
    let gpa = table.wrapping_add(gla & 0xFFF).0;
    w.machine.mem.write_u64(Gpa(gpa & !7), req.old);
    for (i, b) in code.iter().enumerate() {
        if let Some(g) = w.guest.phys(&w.machine, req.rip.wrapping_add(i as u64)) {
            w.machine.mem.write(g, &[*b]);
        }
    }
    // Monitors and cache.
    let entry = Gpa(gpa & !7);
    let other_index = (((gpa & 0xFFF) >> 3) + 256) % 512;
    let other = Gpa((gpa & !0xFFF) | (other_index * 8));
    w.engine().place_monitor(other);
    if req.monitored {
        w.engine().place_monitor(entry);
    }
    if req.cached {
        w.engine().update_cache(entry, false);
    }
    w.engine().commit_hooks();
    // The VCPU as the write found it.
    {
        let v = &mut w.vcpus[0];
        for (r, val) in &req.regs {
            v.set_reg(*r, *val);
        }
        v.set_reg(Gpr::Rsp, rsp);
        v.rip = req.rip;
        v.rflags = Rflags::from_bits_retain(req.rflags) | Rflags::FIXED1;
    }
    let qualification = EptQualification::from_bits_retain(if rmw { 0x1AB } else { 0x1AA });
    let view = w.vcpus[0].eptp_index;
    let violation = EptViolation {
        qualification,
        gpa: Gpa(gpa),
        gla: Gla(gla),
        convertible: true,
    };
    let seen = before(w);
    if let Some(area) = w.vcpus[0].ve_info {
        VeInfo {
            reason: REASON_EPT_VIOLATION,
            semaphore: SEMAPHORE_BUSY,
            qualification,
            gla: Gla(gla),
            gpa: Gpa(gpa),
            eptp_index: view,
        }
        .write(&mut w.machine.mem, area);
    }
    let delivered = {
        let World { machine, vcpus, .. } = &mut *w;
        machine.deliver_exception(&mut vcpus[0], vesim_model::cpu::VECTOR_VE, None)
    };
    if let Err(o) = delivered {
        return Err(VerdictError::World(format!(
            "#VE delivery failed: {}",
            o.name()
        )));
    }
    // The saved CS is the one given.
    if req.cs != layout::KERNEL_CS {
        let slot = w.vcpus[0].gpr[4].wrapping_add(8);
        if let Some(g) = w.guest.phys(&w.machine, slot) {
            w.machine.mem.write_u64(g, u64::from(req.cs));
        }
    }
    w.count_ve(VcpuId(0), violation.qualification.bits());
    w.events.push(Event::Ve {
        cpu: VcpuId(0),
        qualification: violation.qualification.bits(),
        gla: vesim_model::Gla(gla),
        gpa: vesim_model::Gpa(gpa),
    });
    let stop = match w.run_agent(VcpuId(0), 100_000) {
        Ok(_) => None,
        Err(Stop::AgentFault(d)) => Some(format!("agent_fault: {d}")),
        Err(Stop::Guest(o)) => Some(o.name().to_string()),
        Err(Stop::Harness(e)) => Some(format!("harness: {e}")),
    };
    let mut verdict = Verdict {
        outcome: None,
        reason: None,
        old: None,
        new: None,
        entry: w.machine.mem.read_u64(entry),
        rip: w.vcpus[0].rip,
        rflags: w.vcpus[0].rflags.bits(),
        regs: w.vcpus[0].gpr,
        vmcalls: Vec::new(),
        vm_exits: w.counters.exits_total(),
        stop,
        gla,
        gpa,
        names: names.map(|(l, va)| (l, va.0)),
    };
    for e in w.events.iter() {
        match e {
            Event::Agent {
                outcome,
                reason,
                old,
                new,
                ..
            } => {
                verdict.outcome = Some(*outcome);
                verdict.reason = *reason;
                verdict.old = *old;
                verdict.new = *new;
            }
            Event::Vmcall { rdx, rbx, rcx, .. } => verdict.vmcalls.push((*rdx, *rbx, *rcx)),
            _ => {}
        }
    }
    let r = after(seen, &verdict, w);
    Ok((verdict, r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reg() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(0x10000u64),
            Just(u64::MAX),
            Just(0x7FFF_FFFF_FFF8u64),
            Just(0xFFFF_8000_0000_0000u64),
            any::<u64>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

        /// I9: no request, however odd, makes the verdict panic; it is a verdict or an error.
        #[test]
        fn i9_any_request_is_a_verdict_or_an_error(
            bytes in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..18),
                Just(vec![0x48u8, 0x89, 0x18]),
                Just(vec![0xF0u8, 0x48, 0x0F, 0xAB, 0x18]),
                Just(vec![0x48u8, 0xAB]),
                Just(vec![0x48u8, 0x87, 0x18]),
                Just(vec![0x65u8, 0x48, 0x89, 0x18]),
            ],
            rax in reg(), rbx in reg(), rdi in reg(), rsp in reg(),
            rip in prop_oneof![Just(0x40_0000u64), reg()],
            gla in proptest::option::of(prop_oneof![Just(0x10000u64), Just(0x10004u64), reg()]),
            old in any::<u64>(),
            cs in any::<u16>(), rflags in any::<u64>(), hvmi in any::<bool>(),
            cached in any::<bool>(),
        ) {
            let mut regs = BTreeMap::new();
            regs.insert(Gpr::Rax, rax);
            regs.insert(Gpr::Rbx, rbx);
            regs.insert(Gpr::Rdi, rdi);
            if rsp % 3 != 0 {
                regs.insert(Gpr::Rsp, rsp);
            }
            let req = VerdictRequest {
                bytes,
                regs,
                rflags: rflags & 0xED5,
                rip,
                old,
                gla,
                cs,
                cached,
                monitored: !cached,
                profile: if hvmi { Profile::Hvmi } else { Profile::Fixed },
                // RFLAGS bit 5 is reserved (masked off above): a free coin.
                map_next_page: rflags & 0x20 != 0,
            };
            let _ = run(&req);
        }
    }

    #[test]
    fn an_instruction_running_off_the_address_space_is_refused() {
        let req = VerdictRequest {
            bytes: vec![0x48, 0x89, 0x18],
            rip: u64::MAX,
            gla: Some(0x10000),
            ..VerdictRequest::default()
        };
        assert_eq!(run(&req), Err(VerdictError::RipWraps(u64::MAX)));
    }
}

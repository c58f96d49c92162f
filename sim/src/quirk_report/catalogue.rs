//! The catalogue: every quirk of HVMI-BEHAVIOURS section Q, with a switch or the reason it has
//! none.

/// What the model does with a quirk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A named switch: searched for, then costed if it breaks nothing; the text says why,
    /// for when the search finds no failure.
    Switch(&'static str),
    /// No switch, for the reason given.
    NoSwitch(&'static str),
}

/// One quirk of HVMI-BEHAVIOURS section Q (and Q31 of VE-SEMANTICS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quirk {
    /// `Q1` ... `Q31`.
    pub id: &'static str,
    /// One line.
    pub description: &'static str,
    /// Switch or not.
    pub kind: Kind,
    /// For a switch whose effect the spec describes through another switch's events, that
    /// switch: searched with both on when the switch alone breaks nothing.
    pub companion: Option<&'static str>,
}

pub(super) const fn sw(id: &'static str, description: &'static str, why: &'static str) -> Quirk {
    Quirk {
        id,
        description,
        kind: Kind::Switch(why),
        companion: None,
    }
}

/// A switch that acts through `companion`'s events.
pub(super) const fn sw_with(
    id: &'static str,
    description: &'static str,
    why: &'static str,
    companion: &'static str,
) -> Quirk {
    Quirk {
        id,
        description,
        kind: Kind::Switch(why),
        companion: Some(companion),
    }
}

pub(super) const fn no(id: &'static str, description: &'static str, why: &'static str) -> Quirk {
    Quirk {
        id,
        description,
        kind: Kind::NoSwitch(why),
        companion: None,
    }
}

/// Every quirk, in order.
pub const QUIRKS: [Quirk; 31] = [
    sw("Q1", "an unsupported page-table write breaks and retries forever", ""),
    no(
        "Q2",
        "flags read with __readeflags after C code",
        "a property of HVMI's compiled code: the model's agent computes the flags itself, and the semantics HVMI gets right (RAX on a CMPXCHG mismatch, the flags of CMP) are what I2 checks",
    ),
    no(
        "Q3",
        "introcore cannot block a page-table write delivered as a #VE",
        "modelled as HVMI has it in both profiles (the raise path has no deny); no callback in the model denies a write, so there is nothing for a switch to change",
    ),
    sw_with(
        "Q4",
        "BT* with a register bit offset is reduced mod 64",
        "the agent's own GLA check (B38) catches the wrong qword and refuses the write, which `fixed` introcore then emulates correctly (Q1 off), so on its own the quirk costs a VMCALL per such write; the spec's failure is through Q1 (the refusal hits the break loop)",
        "Q1",
    ),
    sw("Q5", "STOSQ emulation leaves RDI unchanged", ""),
    sw(
        "Q6",
        "RIP advanced after the raise, on top of introcore's",
        "introcore writes the saved RIP only when it emulates for the agent (the Q1 path), where the agent does not advance it, so the order is not observable; single-step traps (TF) are not modelled",
    ),
    no(
        "Q7",
        "the GPA-cache patch lands before the agent's store",
        "modelled (B109); a VMCALL is one step in the model and both writes store the same value, so no other VCPU can see the window",
    ),
    no(
        "Q8",
        "the agent's lock index assumes self-map addresses",
        "the model's guest writes page tables only through the self-map and the walker's A/D updates are atomic within a step, so the unserialised cases cannot arise",
    ),
    sw("Q9", "XD and the other non-monitored bits are never reported", ""),
    sw(
        "Q10",
        "the page-walk D-bit rule ignores the access type",
        "a D bit set by a read walk needs a walk that writes an upper level's A while the leaf is already accessed and clean; no operation clears an upper-level A bit, so what shows is the cost: two #VEs for a first write",
    ),
    no(
        "Q11",
        "qualification bit 7 (GLA valid) is not checked",
        "the simulated CPU always sets bit 7 on the #VEs it delivers; forged information pages are the hypercall and agent_instruction fuzz targets' ground (I9)",
    ),
    no(
        "Q12",
        "BUFFER_TOO_SMALL is unreachable; instruction bytes read straight from guest memory",
        "unreachable by construction; a fault on the read is an agent fault (I10), as Q14",
    ),
    no(
        "Q13",
        "SPEC_CTRL overwritten with 1 on every #VE",
        "speculation-control MSR state is outside the model",
    ),
    no(
        "Q14",
        "faults, NMIs and #MC inside the agent hang the VCPU",
        "modelled as HVMI behaves (no switch): a fault in the agent stops the VCPU with agent_fault, an I10 failure; NMIs and #MC are not modelled. The scenario fuzz target found the related hang: a VCPU stuck in agent code keeps the unload gate (B140) shut",
    ),
    sw(
        "Q15",
        "an empty cache slot holds 0, so an entry at GPA 0 counts as cached",
        "",
    ),
    sw("Q16", "no cache eviction while an unload is pending", ""),
    sw(
        "Q17",
        "the cache fill counter only grows and survives redeploy",
        "random replacement only ever loses cache entries, which costs raises and never hides a write: a cost, not a failure",
    ),
    sw_with(
        "Q18",
        "VeIgnoredTotal also counts breaks and early page-walk exits",
        "the events it miscounts are breaks, which only Q1 makes (early page-walk exits are counted as page walks set in both profiles), so on its own it changes nothing",
        "Q1",
    ),
    sw(
        "Q19",
        "CPU-map key for G = 1 descriptors scaled without OR 0xFFF",
        "the worlds give every VCPU a byte-granular 0x50 descriptor (G = 0), as Windows does, so the two keys agree",
    ),
    sw(
        "Q20",
        "no bound on the CPU index; unused CPU-map slots point at VCPU 0's page",
        "",
    ),
    no(
        "Q21",
        "KiKernelExit back-scan with an unsigned loop counter",
        "the kernel image scan at deploy is outside the model (the OS image is not simulated)",
    ),
    no(
        "Q22",
        "load failure resets pending-unload while the unloader may run",
        "the driver-load failure path is outside the model (deploys do not fail in worlds)",
    ),
    no(
        "Q23",
        "RAISE_EPT with a NULL information page dereferences NULL",
        "vesim answers NOT_SUPPORTED where HVMI would crash the hypervisor side; the hypercall fuzz target drives this path",
    ),
    sw(
        "Q24",
        "EPTP index forced to 0 during dispatch, not the untrusted index",
        "the worlds' untrusted view is view 0, as on KVM, so 0 is the right index; the quirk matters where it is not (Xen altp2m view 1)",
    ),
    no(
        "Q25",
        "PtEmuBuffer.Partial not cleared; #VE writes dispatched as R|W",
        "introcore's internal PtEmuBuffer bookkeeping and access flags are outside the model",
    ),
    no(
        "Q26",
        "agent remaps are recognised only through self-map addresses",
        "the model's guest reaches page tables only through the self-map, where the check is exact; the attacks built-in's remaps all go that way",
    ),
    sw(
        "Q27",
        "the upper half of a monitored user PML4 raises on every relevant write",
        "no operation writes entries 256..511 of a user (KPTI) PML4: the model's shadow PML4 carries only user-half entries, so the raise-every-time path never runs",
    ),
    no(
        "Q28",
        "PT-filter details (IF snapshot, CheckLock, one global lock)",
        "the PT filter is a different in-guest mechanism from the #VE agent and is outside the model",
    ),
    no(
        "Q29",
        "IntVeIsPtrInAgent reads IDT[20] of the current VCPU",
        "every VCPU's IDT[20] points at the same handler in the model, so the current VCPU's is the right one",
    ),
    no(
        "Q30",
        "comments that disagree with the code",
        "documentation only",
    ),
    sw(
        "Q31",
        "B38 sums the address mod 2^64 under a 0x67 prefix",
        "page-table entries are reached through the self-map, above 4 GiB, where no 0x67 (32-bit) address can point; where one could, the GLA check refuses the write and `fixed` introcore emulates it (Q1 off), a cost and not a failure",
    ),
];

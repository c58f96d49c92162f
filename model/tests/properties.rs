//! Property tests of the paging walker, the MMU's A/D writes, EPT write protection, the #VE
//! information area and the robustness of `Machine::step` (VE-SEMANTICS section 1, HW §2.2,
//! §4.1–§4.3).
//!
//! The walker is compared with `reference_translate`, a translator written here from the SDM
//! rules (Vol. 3A §4.5–§4.8) and HW §4.1, sharing no code with the model.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use vesim_model::cpu::mmu::{AccessKind, Fault};
use vesim_model::ept::{EptEntry, EptFlags, EptQualification, EptView};
use vesim_model::memory::GuestMemory;
use vesim_model::paging::{AccessType, FrameAllocator, PageSize, PageTableBuilder, PteFlags};
use vesim_model::vcpu::{Cr0, Cr4, DescriptorTable, Efer, Gpr, Rflags, Vcpu};
use vesim_model::ve_info::VeInfo;
use vesim_model::{Gla, Gpa, Machine, MachineConfig, Outcome, ViewId};

/// Cases per property.
const CASES: u32 = 512;

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(CASES)
}

use vesim_model::reference::{bits, model_translate, reference_translate, Paging, FRAMES, SLOTS};

/// Extra bits mixed into an entry now and then.
#[derive(Clone, Copy, Debug)]
enum Junk {
    None,
    /// One bit of 29:12 (reserved in a large-page leaf, or PAT / address there).
    LargeLow(u32),
    /// One bit of 51:46 (reserved with MAXPHYADDR 46).
    High(u32),
    /// One bit of 62:52 (ignored).
    Ignored(u32),
    /// XD (reserved unless EFER.NXE = 1).
    Xd,
}

fn junk() -> impl Strategy<Value = Junk> {
    prop_oneof![
        30 => Just(Junk::None),
        3 => (12u32..30).prop_map(Junk::LargeLow),
        1 => (46u32..52).prop_map(Junk::High),
        2 => (52u32..63).prop_map(Junk::Ignored),
        6 => Just(Junk::Xd),
    ]
}

/// One random paging-structure entry: usually present, pointing at one of FRAMES (sometimes
/// anywhere), R/W and U/S usually set, random PWT, PCD, A, D, G and ignored bits, PS with
/// probability `ps`, and now and then a bit in the large-page range, the reserved high range,
/// bits 62:52 or XD.
fn entry(ps: f64) -> impl Strategy<Value = u64> {
    (
        prop_oneof![30 => (0..FRAMES.len()).prop_map(Some), 1 => Just(None)],
        any::<u64>(),
        prop::bool::weighted(0.96),
        prop::array::uniform2(prop::bool::weighted(0.75)),
        prop::bool::weighted(ps),
        junk(),
    )
        .prop_map(|(target, r, present, [rw, us], ps, junk)| {
            let addr = target.map_or(r & 0x0000_3FFF_FFFF_F000, |t| FRAMES[t]);
            let mut e = addr | (r & 0xF78) | u64::from(present);
            if rw {
                e |= bits::RW;
            }
            if us {
                e |= bits::US;
            }
            if ps {
                e |= bits::PS;
            }
            match junk {
                Junk::None => {}
                Junk::LargeLow(b) | Junk::High(b) | Junk::Ignored(b) => e |= 1 << b,
                Junk::Xd => e |= bits::XD,
            }
            e
        })
}

/// The entries of every frame, frame by frame. FRAMES\[0\] is usually CR3's, so PS (reserved
/// in a PML4E) is rarer there.
fn tables() -> impl Strategy<Value = Vec<u64>> {
    (
        prop::collection::vec(entry(0.03), SLOTS.len()),
        prop::collection::vec(entry(0.15), (FRAMES.len() - 1) * SLOTS.len()),
    )
        .prop_map(|(mut first, rest)| {
            first.extend(rest);
            first
        })
}

fn load_tables(mem: &mut GuestMemory, entries: &[u64]) {
    for (i, e) in entries.iter().enumerate() {
        let frame = FRAMES[i / SLOTS.len()];
        let slot = SLOTS[i % SLOTS.len()];
        mem.write_u64(Gpa(frame + slot * 8), *e);
    }
}

/// A canonical linear address whose four table indices are among SLOTS.
fn gla() -> impl Strategy<Value = u64> {
    (prop::array::uniform4(0..SLOTS.len()), any::<u64>()).prop_map(|(i, r)| {
        let raw = SLOTS[i[0]] << 39
            | SLOTS[i[1]] << 30
            | SLOTS[i[2]] << 21
            | SLOTS[i[3]] << 12
            | (r & 0xFFF);
        (((raw << 16) as i64) >> 16) as u64
    })
}

fn paging() -> impl Strategy<Value = Paging> {
    (
        prop_oneof![4 => Just(0usize), 1 => 0..FRAMES.len()],
        0u64..0x1000,
        prop::array::uniform8(any::<bool>()),
        prop::bool::weighted(0.75),
    )
        .prop_map(|(frame, low, b, nxe)| Paging {
            cr3: FRAMES[frame] | low,
            wp: b[0],
            smep: b[1],
            smap: b[2],
            nxe,
            ac: b[4],
            user: b[5],
            implicit: b[6] && !b[5],
            all_levels: b[7],
        })
}

fn access() -> impl Strategy<Value = AccessType> {
    prop_oneof![
        Just(AccessType::Read),
        Just(AccessType::Write),
        Just(AccessType::Fetch)
    ]
}

fn frame_denied(mask: u8, gpa: u64) -> bool {
    FRAMES
        .iter()
        .position(|f| *f == gpa & !0xFFF)
        .is_some_and(|i| mask & (1 << i) != 0)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn walker_matches_reference_translator(
        entries in tables(),
        p in paging(),
        glas in prop::collection::vec((gla(), access()), 1..8),
        // Each frame is refused by EPT with probability 1/32.
        deny in prop::array::uniform5(prop::bool::weighted(0.03125)),
    ) {
        let mut mem = GuestMemory::new();
        load_tables(&mut mem, &entries);
        let mask = deny
            .iter()
            .enumerate()
            .fold(0u8, |m, (i, d)| m | (u8::from(*d) << i));
        for (gla, access) in glas {
            let want = reference_translate(&mem, &p, gla, access, |g| frame_denied(mask, g));
            let got = model_translate(&mem, &p, gla, access, |g| frame_denied(mask, g));
            prop_assert_eq!(&got, &want, "GLA {:#x}, {:?}, {:?}", gla, access, p);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A/D bits through the MMU: sticky, and never written by a walk that ends in #PF
// ---------------------------------------------------------------------------------------------

fn frames_bytes(mem: &GuestMemory, frames: &[u64]) -> Vec<u64> {
    frames
        .iter()
        .flat_map(|f| (0..512).map(move |i| mem.read_u64(Gpa(f + i * 8))))
        .collect()
}

/// Checks that going from `before` to `after` only set A or D bits.
fn only_ad_bits_added(before: &[u64], after: &[u64]) -> Result<(), String> {
    let ad = bits::A | bits::D;
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        if b & !ad != a & !ad || b & ad & !a != 0 {
            return Err(format!("qword {i}: {b:#x} -> {a:#x}"));
        }
    }
    Ok(())
}

fn access_kind() -> impl Strategy<Value = AccessKind> {
    prop_oneof![
        Just(AccessKind::Read),
        Just(AccessKind::Write),
        Just(AccessKind::ReadWrite),
        Just(AccessKind::Fetch)
    ]
}

/// EPT rights for a paging-structure frame: mostly full, sometimes read-only (A/D writes
/// fault), read+execute, or not present.
fn table_frame_rights() -> impl Strategy<Value = EptFlags> {
    prop_oneof![
        4 => Just(EptFlags::READ | EptFlags::WRITE | EptFlags::EXECUTE),
        2 => Just(EptFlags::READ),
        1 => Just(EptFlags::READ | EptFlags::EXECUTE),
        1 => Just(EptFlags::empty()),
    ]
}

fn vcpu_for(p: &Paging) -> Vcpu {
    let mut v = Vcpu::new_long_mode(p.cr3);
    v.cr0.set(Cr0::WP, p.wp);
    v.cr4.set(Cr4::SMEP, p.smep);
    v.cr4.set(Cr4::SMAP, p.smap);
    v.efer.set(Efer::NXE, p.nxe);
    v.rflags.set(Rflags::AC, p.ac);
    if p.user {
        v.cs = 0x33;
        v.ss = 0x2B;
    }
    v
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ad_bits_are_sticky_and_never_written_by_a_faulting_walk(
        entries in tables(),
        p in paging(),
        rights in prop::array::uniform5(table_frame_rights()),
        accesses in prop::collection::vec((gla(), access_kind(), any::<bool>()), 1..10),
    ) {
        let mut m = Machine::new(MachineConfig {
            ad_writes_all_levels: p.all_levels,
            ..MachineConfig::default()
        });
        load_tables(&mut m.mem, &entries);
        let mut view = EptView::new(EptEntry(
            (EptFlags::READ | EptFlags::WRITE | EptFlags::EXECUTE).bits(),
        ));
        for (f, r) in FRAMES.iter().zip(rights) {
            view.set(Gpa(*f).gfn(), r);
        }
        m.ept.insert(ViewId(0), view).unwrap();
        let v = vcpu_for(&p);
        for (gla, kind, implicit) in accesses {
            let before = frames_bytes(&m.mem, &FRAMES);
            let r = m.translate(&v, Gla(gla), kind, implicit);
            let after = frames_bytes(&m.mem, &FRAMES);
            if let Err(e) = only_ad_bits_added(&before, &after) {
                prop_assert!(false, "{:?} at {:#x}: {} ({:?})", kind, gla, e, r);
            }
            if let Err(Fault::Page { .. }) = r {
                prop_assert_eq!(&before, &after, "#PF at {:#x} wrote an entry", gla);
            }
            if let Err(Fault::EptViolation(ev)) = r {
                // A violation on a paging-structure read (no write bit) comes before any
                // A/D write of this walk.
                if !ev.qualification.contains(EptQualification::WRITE)
                    && !ev.qualification.contains(EptQualification::GLA_TRANSLATED)
                {
                    prop_assert_eq!(&before, &after, "walk-read violation wrote an entry");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A small guest for step-level properties
// ---------------------------------------------------------------------------------------------

/// Guest addresses of the step-level properties.
mod layout {
    pub const TABLES_START: u64 = 0x10_0000;
    pub const TABLES_END: u64 = 0x20_0000;
    pub const CODE_GLA: u64 = 0x40_0000;
    pub const CODE_GPA: u64 = 0x40_0000;
    /// PML4 slot 1: no paging-structure entry shared with the code.
    pub const DATA_GLA: u64 = 0x80_0060_0000;
    pub const DATA_GPA: u64 = 0x30_0000;
    pub const STACK_GLA: u64 = 0x80_0000;
    pub const STACK_GPA: u64 = 0x50_0000;
    pub const RSP_INIT: u64 = 0x80_0F80;
    pub const IDT_GLA: u64 = 0x90_0000;
    pub const IDT_GPA: u64 = 0x52_0000;
    pub const HANDLER: u64 = 0xFFFF_8000_0000_1000;
    pub const INFO_GPA: u64 = 0x54_0000;
    pub const ENTRY_ADDR: u64 = 0x000F_FFFF_FFFF_F000;
}
use layout::*;

struct World {
    m: Machine,
    v: Vcpu,
    tables: Vec<u64>,
}

fn rwx() -> EptFlags {
    EptFlags::READ | EptFlags::WRITE | EptFlags::EXECUTE
}

fn world(user: bool, config: MachineConfig) -> World {
    let mut m = Machine::new(config);
    let mut b = PageTableBuilder::new(
        &mut m.mem,
        FrameAllocator::new(Gpa(TABLES_START), Gpa(TABLES_END)),
    )
    .unwrap();
    let u = if user {
        PteFlags::USER
    } else {
        PteFlags::empty()
    };
    for (gla, gpa, flags) in [
        (CODE_GLA, CODE_GPA, u),
        (DATA_GLA, DATA_GPA, PteFlags::WRITABLE | u),
        (STACK_GLA, STACK_GPA, PteFlags::WRITABLE),
        (IDT_GLA, IDT_GPA, PteFlags::empty()),
    ] {
        b.map(&mut m.mem, Gla(gla), Gpa(gpa), PageSize::Size4K, flags)
            .unwrap();
    }
    m.ept
        .insert(
            ViewId(0),
            EptView::new(EptEntry((rwx() | EptFlags::SUPPRESS_VE).bits())),
        )
        .unwrap();
    let mut gate = [0u8; 16];
    gate[0..2].copy_from_slice(&(HANDLER as u16).to_le_bytes());
    gate[2..4].copy_from_slice(&0x10u16.to_le_bytes());
    gate[5] = 0x8E;
    gate[6..8].copy_from_slice(&((HANDLER >> 16) as u16).to_le_bytes());
    gate[8..12].copy_from_slice(&((HANDLER >> 32) as u32).to_le_bytes());
    m.mem.write(Gpa(IDT_GPA + 20 * 16), &gate);
    let mut v = Vcpu::new_long_mode(b.cr3());
    v.rip = CODE_GLA;
    v.set_reg(Gpr::Rsp, RSP_INIT);
    v.idtr = DescriptorTable {
        base: Gla(IDT_GLA),
        limit: 0xFFF,
    };
    v.tss_rsp0 = RSP_INIT;
    if user {
        v.cs = 0x33;
        v.ss = 0x2B;
    }
    let tables = b.tables().iter().map(|g| g.0).collect();
    let mut w = World { m, v, tables };
    for e in entry_gpas(&w.m.mem, w.v.cr3, CODE_GLA) {
        let x = w.m.mem.read_u64(e);
        w.m.mem.write_u64(e, x | bits::A);
    }
    w
}

/// The GPAs of the four entries that translate `gla` (flags ignored).
fn entry_gpas(mem: &GuestMemory, cr3: u64, gla: u64) -> [Gpa; 4] {
    let mut out = [Gpa(0); 4];
    let mut table = cr3 & ENTRY_ADDR;
    for (i, level) in (1..=4u32).rev().enumerate() {
        let gpa = Gpa(table + ((gla >> (12 + 9 * (level - 1))) & 0x1FF) * 8);
        out[i] = gpa;
        table = mem.read_u64(gpa) & ENTRY_ADDR;
    }
    out
}

/// Instructions that access `[rdi]` (8 bytes unless noted), with the access they make.
const DATA_INSTRUCTIONS: [(&str, &[u8]); 8] = [
    ("mov rax, [rdi]", &[0x48, 0x8B, 0x07]),
    ("mov [rdi], rax", &[0x48, 0x89, 0x07]),
    (
        "lock bts qword [rdi], 0",
        &[0xF0, 0x48, 0x0F, 0xBA, 0x2F, 0x00],
    ),
    ("xchg [rdi], rax", &[0x48, 0x87, 0x07]),
    ("lock cmpxchg [rdi], rcx", &[0xF0, 0x48, 0x0F, 0xB1, 0x0F]),
    ("or [rdi], rax", &[0x48, 0x09, 0x07]),
    ("stosq", &[0x48, 0xAB]),
    ("mov byte [rdi], 0x5a", &[0xC6, 0x07, 0x5A]),
];

/// Random flags for the data path's four entries: present (mostly), R/W, U/S, A, D, XD.
fn data_path_flags() -> impl Strategy<Value = [u64; 4]> {
    prop::array::uniform4(
        (
            prop::bool::weighted(0.9),
            prop::array::uniform4(any::<bool>()),
            0u8..4,
        )
            .prop_map(|(present, [rw, us, a, d], xd)| {
                let mut e = u64::from(present);
                for (on, bit) in [(rw, bits::RW), (us, bits::US), (a, bits::A), (d, bits::D)] {
                    if on {
                        e |= bit;
                    }
                }
                if xd == 0 {
                    e |= bits::XD;
                }
                e
            }),
    )
}

fn set_data_path_flags(w: &mut World, flags: [u64; 4]) {
    let path = entry_gpas(&w.m.mem, w.v.cr3, DATA_GLA);
    let mask = bits::P | bits::RW | bits::US | bits::A | bits::D | bits::XD;
    for (e, f) in path.iter().zip(flags) {
        let x = w.m.mem.read_u64(*e);
        w.m.mem.write_u64(*e, (x & !mask) | f);
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ad_bits_are_sticky_across_steps_and_untouched_by_page_faults(
        user in any::<bool>(),
        wp in any::<bool>(),
        flags in data_path_flags(),
        table_rights in prop::array::uniform4(table_frame_rights()),
        program in prop::collection::vec((0..=DATA_INSTRUCTIONS.len(), 0u64..0x1000), 1..5),
    ) {
        let mut w = world(user, MachineConfig::default());
        w.v.cr0.set(Cr0::WP, wp);
        set_data_path_flags(&mut w, flags);
        let path = entry_gpas(&w.m.mem, w.v.cr3, DATA_GLA);
        // EPT rights of the data path's PDPT, PD and PT pages (the PML4 page holds the code
        // path too and stays RWX).
        for (e, r) in path[1..].iter().zip(table_rights) {
            w.m.ept.view_mut(ViewId(0)).unwrap().set(e.gfn(), r);
        }
        let start = w.v.clone();
        for (choice, offset) in program {
            w.v = start.clone();
            w.v.set_reg(Gpr::Rdi, DATA_GLA + (offset & !7));
            match DATA_INSTRUCTIONS.get(choice) {
                Some((_, bytes)) => w.m.mem.write(Gpa(CODE_GPA), bytes),
                None => {
                    // Fetch from the data page.
                    w.m.mem.write(Gpa(DATA_GPA + offset), &[0x90]);
                    w.v.rip = DATA_GLA + offset;
                }
            }
            let before: Vec<u64> = frames_bytes(&w.m.mem, &w.tables);
            let o = w.m.step(&mut w.v).outcome;
            let after: Vec<u64> = frames_bytes(&w.m.mem, &w.tables);
            if let Err(e) = only_ad_bits_added(&before, &after) {
                prop_assert!(false, "choice {}: {} ({:?})", choice, e, o);
            }
            if let Outcome::PageFault { .. } = o {
                prop_assert_eq!(&before, &after, "choice {}: #PF wrote an entry", choice);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A write through a read-only EPT mapping never changes the page
// ---------------------------------------------------------------------------------------------

/// Write forms of the reference CPU's set (and a few outside it), all on `[rdi]`; `imm` bytes
/// are appended where the encoding takes an immediate.
const WRITE_FORMS: [(&str, &[u8], usize); 31] = [
    ("mov [rdi], rax", &[0x48, 0x89, 0x07], 0),
    ("mov [rdi], eax", &[0x89, 0x07], 0),
    ("mov [rdi], ax", &[0x66, 0x89, 0x07], 0),
    ("mov [rdi], al", &[0x88, 0x07], 0),
    ("mov qword [rdi], imm32", &[0x48, 0xC7, 0x07], 4),
    ("mov byte [rdi], imm8", &[0xC6, 0x07], 1),
    ("xchg [rdi], rax", &[0x48, 0x87, 0x07], 0),
    ("cmpxchg [rdi], rcx", &[0x48, 0x0F, 0xB1, 0x0F], 0),
    (
        "lock cmpxchg [rdi], rcx",
        &[0xF0, 0x48, 0x0F, 0xB1, 0x0F],
        0,
    ),
    ("or [rdi], rax", &[0x48, 0x09, 0x07], 0),
    ("lock or [rdi], rax", &[0xF0, 0x48, 0x09, 0x07], 0),
    ("and [rdi], rax", &[0x48, 0x21, 0x07], 0),
    ("xor [rdi], rax", &[0x48, 0x31, 0x07], 0),
    ("or qword [rdi], imm8", &[0x48, 0x83, 0x0F], 1),
    ("and qword [rdi], imm8", &[0x48, 0x83, 0x27], 1),
    ("xor qword [rdi], imm8", &[0x48, 0x83, 0x37], 1),
    ("or qword [rdi], imm32", &[0x48, 0x81, 0x0F], 4),
    ("and qword [rdi], imm32", &[0x48, 0x81, 0x27], 4),
    ("xor qword [rdi], imm32", &[0x48, 0x81, 0x37], 4),
    ("bts [rdi], rax", &[0x48, 0x0F, 0xAB, 0x07], 0),
    ("btr [rdi], rax", &[0x48, 0x0F, 0xB3, 0x07], 0),
    ("btc [rdi], rax", &[0x48, 0x0F, 0xBB, 0x07], 0),
    (
        "lock bts qword [rdi], imm8",
        &[0xF0, 0x48, 0x0F, 0xBA, 0x2F],
        1,
    ),
    ("btr qword [rdi], imm8", &[0x48, 0x0F, 0xBA, 0x37], 1),
    ("btc qword [rdi], imm8", &[0x48, 0x0F, 0xBA, 0x3F], 1),
    ("stosq", &[0x48, 0xAB], 0),
    ("stosb", &[0xAA], 0),
    ("add [rdi], rax (outside the set)", &[0x48, 0x01, 0x07], 0),
    ("inc qword [rdi] (outside the set)", &[0x48, 0xFF, 0x07], 0),
    (
        "movnti [rdi], rax (outside the set)",
        &[0x48, 0x0F, 0xC3, 0x07],
        0,
    ),
    ("push qword [rdi] (reads only)", &[0xFF, 0x37], 0),
];

/// EPT rights without W (and their suppress-#VE bit).
fn read_only_rights() -> impl Strategy<Value = EptEntry> {
    (
        prop_oneof![
            Just(EptFlags::empty()),
            Just(EptFlags::READ),
            Just(EptFlags::READ | EptFlags::EXECUTE),
            Just(EptFlags::EXECUTE),
        ],
        any::<bool>(),
    )
        .prop_map(|(r, sve)| {
            let r = if sve { r | EptFlags::SUPPRESS_VE } else { r };
            EptEntry::new(Gpa(DATA_GPA).gfn(), r)
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn write_through_read_only_ept_never_changes_the_page(
        form in 0..WRITE_FORMS.len(),
        imm in any::<u32>(),
        rax in any::<u64>(),
        rcx in any::<u64>(),
        offset in 0u64..0x1000,
        rights in read_only_rights(),
        df in any::<bool>(),
        ve in any::<bool>(),
        semaphore in prop_oneof![Just(0u32), any::<u32>()],
        options in prop::array::uniform3(any::<bool>()),
        user in any::<bool>(),
        fill in any::<u8>(),
    ) {
        let config = MachineConfig {
            ad_writes_all_levels: options[0],
            exception_bitmap_ve: options[1],
            eptp_index_reads_zero: options[2],
            no_translation_cache: false,
        no_decode_cache: false,
        };
        let mut w = world(user, config);
        w.m.mem.write(Gpa(DATA_GPA), &[fill; 4096]);
        w.m.ept
            .view_mut(ViewId(0))
            .unwrap()
            .set_entry(Gpa(DATA_GPA).gfn(), rights);
        let (_, bytes, imm_len) = WRITE_FORMS[form];
        let mut code = bytes.to_vec();
        code.extend_from_slice(&imm.to_le_bytes()[..imm_len]);
        w.m.mem.write(Gpa(CODE_GPA), &code);
        w.v.set_reg(Gpr::Rax, rax);
        w.v.set_reg(Gpr::Rcx, rcx);
        w.v.set_reg(Gpr::Rdi, DATA_GLA + offset);
        w.v.rflags.set(Rflags::DF, df);
        w.v.ve_enabled = ve;
        w.v.ve_info = Some(Gpa(INFO_GPA));
        VeInfo::set_semaphore(&mut w.m.mem, Gpa(INFO_GPA), semaphore);
        let before = w.m.mem.frame(Gpa(DATA_GPA).gfn()).map(|f| f.to_vec());
        let o = w.m.step(&mut w.v).outcome;
        let after = w.m.mem.frame(Gpa(DATA_GPA).gfn()).map(|f| f.to_vec());
        prop_assert_eq!(before, after, "{} changed the page ({:?})", WRITE_FORMS[form].0, o);
    }
}

// ---------------------------------------------------------------------------------------------
// The decode cache is invisible
// ---------------------------------------------------------------------------------------------

/// Instruction bytes for one step: a write form with an immediate, a data instruction, or any
/// 15 bytes.
fn any_code() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (0..WRITE_FORMS.len(), any::<u64>()).prop_map(|(i, imm)| {
            let (_, bytes, imm_len) = WRITE_FORMS[i];
            let mut code = bytes.to_vec();
            code.extend_from_slice(&imm.to_le_bytes()[..imm_len]);
            code
        }),
        (0..DATA_INSTRUCTIONS.len()).prop_map(|i| DATA_INSTRUCTIONS[i].1.to_vec()),
        proptest::collection::vec(any::<u8>(), 15),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// The same steps on a machine with the decode cache and on one that decodes every
    /// fetch end the same way, leave the same VCPU and the same memory, including when code
    /// is rewritten in place (the same RIP, new bytes), and when an instruction runs into the
    /// unmapped page after the code page.
    #[test]
    fn the_decode_cache_changes_no_step(
        steps in proptest::collection::vec(
            (any_code(), prop_oneof![Just(0u64), Just(0x40), Just(0xFF8)], any::<u64>()),
            1..16,
        ),
    ) {
        let mut cached = world(false, MachineConfig::default());
        let mut decoding = world(
            false,
            MachineConfig {
                no_decode_cache: true,
                ..MachineConfig::default()
            },
        );
        for (code, offset, rax) in &steps {
            for w in [&mut cached, &mut decoding] {
                w.m.mem.write(Gpa(CODE_GPA + offset), code);
                w.v.rip = CODE_GLA + offset;
                w.v.set_reg(Gpr::Rsp, RSP_INIT);
                w.v.set_reg(Gpr::Rax, *rax);
                w.v.set_reg(Gpr::Rdi, DATA_GLA + (rax & 0xFF8));
            }
            let a = cached.m.step(&mut cached.v);
            let b = decoding.m.step(&mut decoding.v);
            prop_assert_eq!(&a, &b, "{:x?} at +{:#x}", code, offset);
            prop_assert_eq!(&cached.v, &decoding.v);
            prop_assert!(cached.m.mem == decoding.m.mem, "memory differs after {:x?}", code);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The #VE information area round-trips
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ve_info_write_then_read_round_trips(
        base in any::<u64>(),
        reason in any::<u32>(),
        semaphore in any::<u32>(),
        qualification in any::<u64>(),
        gla in any::<u64>(),
        gpa in any::<u64>(),
        index in any::<u16>(),
    ) {
        let info = VeInfo {
            reason,
            semaphore,
            qualification: EptQualification::from_bits_retain(qualification),
            gla: Gla(gla),
            gpa: Gpa(gpa),
            eptp_index: ViewId(index),
        };
        let mut mem = GuestMemory::new();
        info.write(&mut mem, Gpa(base));
        prop_assert_eq!(VeInfo::read(&mem, Gpa(base)), info);
        prop_assert_eq!(VeInfo::semaphore(&mem, Gpa(base)), semaphore);
    }

    #[test]
    fn ve_info_read_then_write_reproduces_the_hardware_bytes(
        base in any::<u64>(),
        raw in prop::collection::vec(any::<u8>(), 0x28),
        other in prop::collection::vec(any::<u8>(), 0x28),
    ) {
        let mut mem = GuestMemory::new();
        mem.write(Gpa(base), &raw);
        let info = VeInfo::read(&mem, Gpa(base));
        let mut fresh = GuestMemory::new();
        fresh.write(Gpa(base), &other);
        info.write(&mut fresh, Gpa(base));
        let mut out = vec![0u8; 0x28];
        fresh.read(Gpa(base), &mut out);
        prop_assert_eq!(&out[..0x22], &raw[..0x22], "bytes 0x00..0x22");
        prop_assert_eq!(&out[0x22..], &other[0x22..], "write leaves 0x22..0x28 alone");
    }
}

// ---------------------------------------------------------------------------------------------
// Nothing guest-controlled panics
// ---------------------------------------------------------------------------------------------

/// A register value: anything, or near one of the mapped addresses.
fn register() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => any::<u64>(),
        1 => (0u64..0x1100).prop_map(|o| DATA_GLA + o - 0x80),
        1 => (0u64..0x1100).prop_map(|o| STACK_GLA + o - 0x80),
        1 => (0u64..0x1000).prop_map(|o| CODE_GLA + o),
        1 => 0u64..0x1000,
        1 => Just(0x8000_0000_0000u64),
    ]
}

/// Raw values for paging-structure entries: anything, or an XOR of a few bits.
#[derive(Clone, Copy, Debug)]
enum Corruption {
    Replace(u64),
    Flip(u64),
}

fn corruption() -> impl Strategy<Value = (usize, Corruption)> {
    (
        0usize..16,
        prop_oneof![
            any::<u64>().prop_map(Corruption::Replace),
            (0u32..64).prop_map(|b| Corruption::Flip(1 << b)),
            any::<u64>().prop_map(Corruption::Flip),
        ],
    )
}

fn raw_ept_entry() -> impl Strategy<Value = (usize, u64)> {
    (
        0usize..16,
        prop_oneof![
            any::<u64>(),
            any::<u8>().prop_map(u64::from),
            (any::<u8>(), any::<bool>()).prop_map(|(b, s)| u64::from(b) | u64::from(s) << 63),
        ],
    )
}

/// Instruction heads the random bytes start with half of the time: the reference CPU's set,
/// VMX instructions, exits, stack and string forms, prefixes, VEX/EVEX and system instructions.
const HEADS: [&[u8]; 40] = [
    &[0x48, 0x89, 0x07],
    &[0x48, 0x8B, 0x07],
    &[0x48, 0xC7, 0x07],
    &[0x48, 0x87, 0x07],
    &[0xF0, 0x48, 0x0F, 0xB1, 0x0F],
    &[0x48, 0x0F, 0xB1],
    &[0x48, 0x09],
    &[0x48, 0x83],
    &[0x48, 0x81],
    &[0x48, 0x0F, 0xAB],
    &[0x48, 0x0F, 0xBA],
    &[0x66, 0x0F, 0xBA],
    &[0x0F, 0xA3],
    &[0x48, 0xAB],
    &[0x67, 0x48, 0xAB],
    &[0xF3, 0x48, 0xAB],
    &[0x48, 0xA5],
    &[0x0F, 0x01, 0xD4],
    &[0x0F, 0x01, 0xC1],
    &[0x0F, 0xA2],
    &[0xF4],
    &[0x0F, 0x32],
    &[0x0F, 0x30],
    &[0x50],
    &[0x58],
    &[0xE8],
    &[0xC3],
    &[0x48, 0xCF],
    &[0xCD],
    &[0xFF, 0x37],
    &[0x64, 0x48, 0x8B],
    &[0x65, 0x48, 0x89],
    &[0x48, 0x8B, 0x05],
    &[0x67, 0x48, 0x89],
    &[0x0F, 0xAE],
    &[0x48, 0x0F, 0xC7, 0x0F],
    &[0xC5, 0xFE, 0x7F],
    &[0xC4, 0xE2, 0x7D, 0x90],
    &[0x62, 0xF1, 0x7E, 0x48, 0x7F],
    &[0x0F, 0x22, 0xD8],
];

fn code_bytes() -> impl Strategy<Value = [u8; 15]> {
    (
        prop::option::weighted(0.5, 0..HEADS.len()),
        prop::array::uniform15(any::<u8>()),
    )
        .prop_map(|(head, mut bytes)| {
            if let Some(h) = head {
                bytes[..HEADS[h].len()].copy_from_slice(HEADS[h]);
            }
            bytes
        })
}

#[derive(Clone, Debug)]
struct Chaos {
    code: [u8; 15],
    code_offset: u64,
    rip_random: Option<u64>,
    gpr: [u64; 16],
    rflags: u64,
    cs: u16,
    ss: u16,
    control: Option<(u64, u64, u64)>,
    idtr: (u64, u16),
    tss_rsp0: u64,
    eptp_index: u16,
    ve_info: Option<u64>,
    flags: [bool; 6],
    semaphore: u32,
    corruptions: Vec<(usize, Corruption)>,
    ept_entries: Vec<(usize, u64)>,
    extra_views: Vec<u16>,
    steps: usize,
}

fn chaos() -> impl Strategy<Value = Chaos> {
    let machine = (
        code_bytes(),
        prop_oneof![3 => 0u64..0x10, 1 => 0xFF0u64..0x1000, 1 => 0u64..0x1000],
        prop::option::weighted(0.1, any::<u64>()),
        prop::array::uniform16(register()),
        any::<u64>(),
        prop_oneof![Just(0x10u16), Just(0x33), any::<u16>()],
        prop_oneof![Just(0x18u16), Just(0x2B), any::<u16>()],
        prop::option::weighted(0.1, (any::<u64>(), any::<u64>(), any::<u64>())),
        prop_oneof![
            3 => Just((IDT_GLA, 0xFFFu16)),
            1 => (register(), any::<u16>()),
        ],
        register(),
    );
    let vmx = (
        prop_oneof![6 => Just(0u16), 1 => 0u16..8, 1 => any::<u16>()],
        prop::option::weighted(0.8, prop_oneof![Just(INFO_GPA), any::<u64>()]),
        prop::array::uniform6(any::<bool>()),
        prop_oneof![Just(0u32), any::<u32>()],
        prop_oneof![Just(Vec::new()), prop::collection::vec(corruption(), 1..4)],
        prop_oneof![
            Just(Vec::new()),
            prop::collection::vec(raw_ept_entry(), 1..4)
        ],
        prop::collection::vec(prop_oneof![1u16..8, any::<u16>()], 0..4),
        1usize..4,
    );
    (machine, vmx).prop_map(
        |(
            (code, code_offset, rip_random, gpr, rflags, cs, ss, control, idtr, tss_rsp0),
            (eptp_index, ve_info, flags, semaphore, corruptions, ept_entries, extra_views, steps),
        )| Chaos {
            code,
            code_offset,
            rip_random,
            gpr,
            rflags,
            cs,
            ss,
            control,
            idtr,
            tss_rsp0,
            eptp_index,
            ve_info,
            flags,
            semaphore,
            corruptions,
            ept_entries,
            extra_views,
            steps,
        },
    )
}

/// The guest of the robustness properties, with everything `c` asks for.
fn chaos_world(c: &Chaos) -> World {
    let config = MachineConfig {
        ad_writes_all_levels: c.flags[0],
        exception_bitmap_ve: c.flags[1],
        eptp_index_reads_zero: c.flags[2],
        no_translation_cache: false,
        no_decode_cache: false,
    };
    let mut w = world(c.flags[3], config);
    // Paging-structure entries on the paths of code, data, stack and IDT.
    let mut slots: Vec<Gpa> = Vec::new();
    for gla in [CODE_GLA, DATA_GLA, STACK_GLA, IDT_GLA] {
        slots.extend(entry_gpas(&w.m.mem, w.v.cr3, gla));
    }
    for (i, corruption) in &c.corruptions {
        let slot = slots[i % slots.len()];
        let old = w.m.mem.read_u64(slot);
        let new = match corruption {
            Corruption::Replace(v) => *v,
            Corruption::Flip(m) => old ^ m,
        };
        w.m.mem.write_u64(slot, new);
    }
    // Raw EPT entries for the interesting frames.
    let mut gfns: Vec<Gpa> = w.tables.iter().map(|t| Gpa(*t)).collect();
    gfns.extend(
        [
            CODE_GPA,
            CODE_GPA + 0x1000,
            DATA_GPA,
            STACK_GPA,
            IDT_GPA,
            INFO_GPA,
        ]
        .map(Gpa),
    );
    for (i, raw) in &c.ept_entries {
        let g = gfns[i % gfns.len()];
        w.m.ept
            .view_mut(ViewId(0))
            .unwrap()
            .set_entry(g.gfn(), EptEntry(*raw));
    }
    for id in &c.extra_views {
        // Indices >= 512 are refused; that is a usage error, not a guest action.
        let _ =
            w.m.ept
                .insert(ViewId(*id), EptView::new(EptEntry(rwx().bits())));
    }
    let code_gla = CODE_GLA + c.code_offset;
    w.m.mem.write(Gpa(CODE_GPA + c.code_offset), &c.code);
    let v = &mut w.v;
    v.gpr = c.gpr;
    v.rip = c.rip_random.unwrap_or(code_gla);
    v.rflags = Rflags::from_bits_retain(c.rflags);
    v.cs = c.cs;
    v.ss = c.ss;
    if let Some((cr0, cr4, efer)) = c.control {
        v.cr0 = Cr0::from_bits_retain(cr0);
        v.cr4 = Cr4::from_bits_retain(cr4);
        v.efer = Efer::from_bits_retain(efer);
    }
    v.idtr = DescriptorTable {
        base: Gla(c.idtr.0),
        limit: c.idtr.1,
    };
    v.tss_rsp0 = c.tss_rsp0;
    v.eptp_index = ViewId(c.eptp_index);
    v.ve_info = c.ve_info.map(Gpa);
    v.ve_enabled = c.flags[4];
    v.vmfunc_enabled = c.flags[5];
    if let Some(info) = c.ve_info {
        VeInfo::set_semaphore(&mut w.m.mem, Gpa(info), c.semaphore);
    }
    w
}

/// Checks that `after` differs from `before` only by A or D bits (bits 5 and 6 of aligned
/// qwords) being set, outside the 0x28 hardware bytes of the information area at `info`.
fn only_ad_changes(
    before: &GuestMemory,
    after: &GuestMemory,
    info: Option<u64>,
) -> Result<(), String> {
    let in_info = |gpa: u64| info.is_some_and(|i| gpa.wrapping_sub(i) < 0x28);
    let mut gfns: Vec<u64> = before.frames().map(|(g, _)| g.0).collect();
    gfns.extend(after.frames().map(|(g, _)| g.0));
    gfns.sort_unstable();
    gfns.dedup();
    for gfn in gfns {
        for i in 0..512u64 {
            let gpa = (gfn << 12) + i * 8;
            let (b, a) = (before.read_u64(Gpa(gpa)), after.read_u64(Gpa(gpa)));
            if b == a {
                continue;
            }
            let ad = bits::A | bits::D;
            let info_bytes = (0..8u64)
                .filter(|k| in_info(gpa + k))
                .fold(0u64, |m, k| m | 0xFF << (8 * k));
            if (b ^ a) & !info_bytes & !ad != 0 || b & ad & !a & !info_bytes != 0 {
                return Err(format!("GPA {gpa:#x}: {b:#x} -> {a:#x}"));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn nothing_guest_controlled_panics(c in chaos()) {
        let mut w = chaos_world(&c);
        for _ in 0..c.steps {
            let step = w.m.step(&mut w.v);
            prop_assert!(step.length as usize <= 15);
            if step.outcome != Outcome::Executed {
                break;
            }
        }
    }

    #[test]
    fn a_step_that_does_not_complete_commits_only_ad_bits(c in chaos()) {
        // VE-SEMANTICS 1: every access is made before the instruction's writes are committed,
        // and only A/D writes of the walks stay. Outside #VE delivery (which also writes the
        // information area and the stack) and completed instructions, a step changes no
        // VCPU state and no memory but A/D bits.
        let mut w = chaos_world(&c);
        for _ in 0..c.steps {
            let vcpu_before = w.v.clone();
            let mem_before = w.m.mem.clone();
            let step = w.m.step(&mut w.v);
            if matches!(step.outcome, Outcome::Executed | Outcome::VeDelivered(_)) {
                continue;
            }
            prop_assert_eq!(&w.v, &vcpu_before, "{:?}", step);
            if let Err(e) = only_ad_changes(&mem_before, &w.m.mem, c.ve_info) {
                prop_assert!(false, "{:?}: {}", step, e);
            }
            break;
        }
    }
}

//! Processes and the memory manager. Every page-table write the memory manager makes is a real
//! guest instruction from the MM code page ([`crate::layout::mm_code`]), executed by the
//! reference CPU on a VCPU through the process's self-map, so it faults, #VEs and exits
//! exactly as the hardware would. Frames come from a free list (the PFN database hands out
//! zeroed pages); swapped-out contents go to a pagefile kept by the model.

use super::Guest;
use crate::events::Stop;
use crate::layout::{self, mm_code};
use std::collections::BTreeMap;
use vesim_model::paging::self_map_entry_address;
use vesim_model::{Gla, Gpa, Machine};

/// Entry bits the memory manager uses: the model's [`vesim_model::paging::PteFlags`] as the integers the memory
/// manager's instructions take, plus its one software bit.
pub mod bits {
    use vesim_model::paging::PteFlags;
    /// Present.
    pub const P: u64 = PteFlags::PRESENT.bits();
    /// Writable.
    pub const RW: u64 = PteFlags::WRITABLE.bits();
    /// User.
    pub const US: u64 = PteFlags::USER.bits();
    /// Write-through.
    pub const PWT: u64 = PteFlags::PWT.bits();
    /// Cache disable.
    pub const PCD: u64 = PteFlags::PCD.bits();
    /// Accessed.
    pub const A: u64 = PteFlags::ACCESSED.bits();
    /// Dirty.
    pub const D: u64 = PteFlags::DIRTY.bits();
    /// PAT of a 4 KiB leaf: the bit that is PS in the entries above (HW §4.1).
    pub const PAT: u64 = PteFlags::PAGE_SIZE.bits();
    /// Software bit 10 (ignored by the walker), marking a swapped-out entry (not
    /// present).
    pub const SWAPPED: u64 = 1 << 10;
    /// Execute disable.
    pub const XD: u64 = PteFlags::NO_EXECUTE.bits();
    /// The caching-attribute bits of a 4K leaf.
    pub const CACHING: u64 = PWT | PCD | PAT;
}

/// A process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    /// Process id (index in `Guest::processes`).
    pub pid: u32,
    /// The kernel CR3 (its PML4 has the kernel half and the self-map).
    pub cr3: u64,
    /// The user CR3 under KPTI.
    pub user_cr3: Option<u64>,
    /// Introcore protects this process (monitors its translations).
    pub protected: bool,
    /// Mapped pages: linear address → frame.
    pub pages: BTreeMap<u64, Gpa>,
    /// Swapped-out pages.
    pub swapped: BTreeMap<u64, ()>,
    /// The process has exited.
    pub exited: bool,
}

/// Errors of memory-manager operations.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MmError {
    /// No such process.
    #[error("process {0} does not exist or has exited")]
    NoProcess(u32),
    /// Out of frames.
    #[error("the guest ran out of page frames")]
    OutOfFrames,
    /// The page is not in the expected state.
    #[error("page {0:#x} is not in a state that allows this operation")]
    State(u64),
    /// The VCPU stopped.
    #[error("the VCPU stopped: {0:?}")]
    Stopped(Stop),
    /// Introcore refused a lifecycle request.
    #[error("introcore refused: {0}")]
    Refused(String),
}

impl From<Stop> for MmError {
    fn from(s: Stop) -> Self {
        MmError::Stopped(s)
    }
}

/// Steps the memory-manager instruction may take, #VEs and the agent included.
pub const MM_STEPS_MAX: u64 = 10_000;

/// The instruction of a directed page-table-entry write (`write` operations), each with its
/// operand `arg`. These are the forms the memory manager itself does not use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryInsn {
    /// `stosq`: the entry becomes `old ^ arg` (RDI advances past it).
    Stosq,
    /// `mov dword [rdi], esi`: the entry's low half becomes that of `old ^ arg` (a 4-byte
    /// write, which the agent refuses, B37).
    Mov32,
    /// `lock bts [rdi], rsi`: sets bit `arg` of the bit string at the entry (a signed offset;
    /// 64 and up address the entries after it).
    BtsReg,
}

impl EntryInsn {
    /// Every form with its name.
    pub const ALL: [(&'static str, EntryInsn); 3] = [
        ("stosq", EntryInsn::Stosq),
        ("mov32", EntryInsn::Mov32),
        ("bts", EntryInsn::BtsReg),
    ];

    /// The form called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, i)| *i)
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, i)| *i == self)
            .map_or("?", |(n, _)| n)
    }
}

/// One memory-manager instruction with its operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Micro {
    /// Offset of the instruction in the MM code page.
    pub offset: u64,
    /// RDI (the entry's linear address).
    pub rdi: u64,
    /// RSI (the value, or the page for touches).
    pub rsi: u64,
    /// RAX (the comparand, or the value a touch writes).
    pub rax: u64,
}

/// Whether the MM instruction at `offset` is one of the page-table-entry writes.
pub fn is_pt_write(offset: u64) -> bool {
    mm_code::PT_WRITES.iter().any(|(o, _)| *o == offset)
}

impl Micro {
    pub(crate) fn new(instr: (u64, &[u8]), rdi: u64, rsi: u64, rax: u64) -> Self {
        Micro {
            offset: instr.0,
            rdi,
            rsi,
            rax,
        }
    }
    /// The instruction (offset, bytes).
    pub fn instr(&self) -> (u64, &'static [u8]) {
        mm_code::ALL
            .iter()
            .copied()
            .find(|(o, _)| *o == self.offset)
            .unwrap_or(mm_code::MOV)
    }
}

/// What the memory manager records once a plan's instructions have all run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// Nothing.
    Nothing,
    /// `va` is mapped to `frame`.
    Mapped {
        /// Page.
        va: u64,
        /// Frame.
        frame: Gpa,
    },
    /// `va` is unmapped; its frame (if present) is free.
    Unmapped {
        /// Page.
        va: u64,
        /// The frame it had.
        frame: Option<Gpa>,
    },
    /// `va` is swapped out; `frame` is free.
    SwappedOut {
        /// Page.
        va: u64,
        /// The frame it had.
        frame: Gpa,
    },
    /// `va` is back in `frame`.
    SwappedIn {
        /// Page.
        va: u64,
        /// Its new frame.
        frame: Gpa,
    },
}

/// A memory-manager operation as data: the instructions it executes, in order, in process
/// `pid`'s address space, and its bookkeeping. Plans run to completion (`World::run_plan`)
/// or one hardware step at a time, interleaved with other VCPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The process.
    pub pid: u32,
    /// The instructions.
    pub micros: Vec<Micro>,
    /// The bookkeeping.
    pub finish: Finish,
}

impl Plan {
    fn one(pid: u32, m: Micro, finish: Finish) -> Plan {
        Plan {
            pid,
            micros: vec![m],
            finish,
        }
    }
}

/// What the memory manager reads of the guest's processes.
impl Guest {
    /// Process `pid`, unless it exited.
    pub fn process(&self, pid: u32) -> Result<&Process, MmError> {
        self.processes
            .get(pid as usize)
            .filter(|p| !p.exited)
            .ok_or(MmError::NoProcess(pid))
    }

    /// The entry of `level` for `va` in process `pid`, read the way the memory manager reads
    /// it (through its page tables; software, no A/D).
    pub fn entry_value(
        &self,
        machine: &Machine,
        pid: u32,
        va: u64,
        level: u8,
    ) -> Option<(u64, Gpa)> {
        let p = self.process(pid).ok()?;
        let gla = self_map_entry_address(self.config.self_map_index, Gla(va), level);
        let gpa = crate::guest::software_translate(machine, p.cr3, gla.0)?;
        Some((machine.mem.read_u64(gpa), gpa))
    }

    /// The self-map linear address of the entry of `level` for `va`.
    pub fn entry_gla(&self, va: u64, level: u8) -> u64 {
        self_map_entry_address(self.config.self_map_index, Gla(va), level).0
    }
}

/// The guest's memory manager at work: the guest's state and guest memory. It plans page-table
/// work (allocating frames and tables as it plans) and does the bookkeeping of a completed plan;
/// the instructions of a plan run on a VCPU through the world.
pub struct Mm<'a> {
    /// The guest.
    pub guest: &'a mut Guest,
    /// Memory and EPT.
    pub machine: &'a mut Machine,
}

impl Mm<'_> {
    fn process(&self, pid: u32) -> Result<&Process, MmError> {
        self.guest.process(pid)
    }

    /// The entry of `level` for `va` in process `pid` ([`Guest::entry_value`]).
    pub fn entry_value(&self, pid: u32, va: u64, level: u8) -> Option<(u64, Gpa)> {
        self.guest.entry_value(self.machine, pid, va, level)
    }

    fn entry_gla(&self, va: u64, level: u8) -> u64 {
        self.guest.entry_gla(va, level)
    }

    fn zeroed_frame(&mut self, table: bool) -> Result<Gpa, MmError> {
        let g = if table {
            self.guest
                .proc_tables
                .alloc()
                .map_err(|_| MmError::OutOfFrames)?
                .gpa()
        } else if let Some(f) = self.guest.free_pages.pop_first() {
            f
        } else {
            self.guest
                .pages
                .alloc()
                .map_err(|_| MmError::OutOfFrames)?
                .gpa()
        };
        self.machine.mem.write(g, &[0u8; 0x1000]);
        Ok(g)
    }

    /// Creates a process: a PML4 with the kernel half of the System PML4 and its own
    /// self-map entry (and a user PML4 under KPTI, mapped for the kernel at
    /// [`layout::KPTI_SHADOW_GVA`]).
    pub fn create_process(&mut self, protected: bool) -> Result<u32, MmError> {
        let pid = self.guest.processes.len() as u32;
        let pml4 = self.zeroed_frame(true)?;
        let sys = Gpa(self.guest.cr3 & !0xFFF);
        for i in 256..512u64 {
            let e = self.machine.mem.read_u64(sys.wrapping_add(i * 8));
            self.machine.mem.write_u64(pml4.wrapping_add(i * 8), e);
        }
        let s = self.guest.config.self_map_index;
        self.machine
            .mem
            .write_u64(pml4.wrapping_add(s * 8), pml4.0 | bits::P | bits::RW);
        let user_cr3 = if self.guest.config.kpti {
            let upml4 = self.zeroed_frame(true)?;
            for i in 256..512u64 {
                if i == s {
                    continue;
                }
                let e = self.machine.mem.read_u64(sys.wrapping_add(i * 8));
                self.machine.mem.write_u64(upml4.wrapping_add(i * 8), e);
            }
            let gva = layout::KPTI_SHADOW_GVA + u64::from(pid) * 0x1000;
            self.guest
                .map_at(
                    self.machine,
                    gva,
                    upml4,
                    vesim_model::paging::PteFlags::WRITABLE,
                )
                .map_err(|_| MmError::OutOfFrames)?;
            Some(upml4.0)
        } else {
            None
        };
        self.guest.processes.push(Process {
            pid,
            cr3: pml4.0,
            user_cr3,
            protected,
            pages: BTreeMap::new(),
            swapped: BTreeMap::new(),
            exited: false,
        });
        Ok(pid)
    }

    /// The plan of `World::mm_touch`.
    pub fn plan_touch(&self, pid: u32, va: u64, write: bool, value: u64) -> Result<Plan, MmError> {
        self.process(pid)?;
        let instr = if write {
            mm_code::TOUCH_WRITE
        } else {
            mm_code::TOUCH_READ
        };
        Ok(Plan::one(
            pid,
            Micro::new(instr, 0, va, value),
            Finish::Nothing,
        ))
    }

    /// The bookkeeping of a completed plan.
    pub fn finish_plan(&mut self, pid: u32, finish: Finish) {
        let p = self.guest.processes.get_mut(pid as usize);
        match (finish, p) {
            (Finish::Mapped { va, frame }, Some(p)) => {
                p.pages.insert(va, frame);
            }
            (Finish::Unmapped { va, frame }, Some(p)) => {
                p.pages.remove(&va);
                p.swapped.remove(&va);
                self.guest.pagefile.remove(&(pid, va));
                if let Some(f) = frame {
                    self.guest.free_pages.insert(f);
                }
            }
            (Finish::SwappedOut { va, frame }, Some(p)) => {
                p.pages.remove(&va);
                p.swapped.insert(va, ());
                self.guest.free_pages.insert(frame);
            }
            (Finish::SwappedIn { va, frame }, Some(p)) => {
                p.swapped.remove(&va);
                p.pages.insert(va, frame);
            }
            _ => {}
        }
    }

    /// The plan of `World::mm_map`; frames and tables are allocated now.
    pub fn plan_map(&mut self, pid: u32, va: u64, flags: u64) -> Result<Plan, MmError> {
        self.process(pid)?;
        let user = va >> 63 == 0;
        let us = if user { bits::US } else { 0 };
        let mut micros = Vec::new();
        for level in [4u8, 3, 2] {
            let present = self
                .entry_value(pid, va, level)
                .is_some_and(|(e, _)| e & bits::P != 0);
            if !present {
                let t = self.zeroed_frame(true)?;
                let value = t.0 | bits::P | bits::RW | us;
                micros.push(Micro::new(
                    mm_code::MOV,
                    self.entry_gla(va, level),
                    value,
                    0,
                ));
                if level == 4 && user && self.process(pid)?.user_cr3.is_some() {
                    let shadow = layout::KPTI_SHADOW_GVA
                        + u64::from(pid) * 0x1000
                        + ((va >> 39) & 0x1FF) * 8;
                    micros.push(Micro::new(mm_code::MOV, shadow, value, 0));
                }
                // Below a table written only now the walk cannot see further: the lower
                // tables are new as well.
                for lower in (2..level).rev() {
                    let t = self.zeroed_frame(true)?;
                    let value = t.0 | bits::P | bits::RW | us;
                    micros.push(Micro::new(
                        mm_code::MOV,
                        self.entry_gla(va, lower),
                        value,
                        0,
                    ));
                }
                break;
            }
        }
        let frame = self.zeroed_frame(false)?;
        let value = frame.0 | flags | bits::P | us;
        micros.push(Micro::new(mm_code::MOV, self.entry_gla(va, 1), value, 0));
        Ok(Plan {
            pid,
            micros,
            finish: Finish::Mapped { va, frame },
        })
    }

    /// The plan of `World::mm_unmap`.
    pub fn plan_unmap(&mut self, pid: u32, va: u64) -> Result<Plan, MmError> {
        let e = self.leaf(pid, va)?;
        let frame = (e & bits::P != 0).then_some(Gpa(e & 0x000F_FFFF_FFFF_F000));
        Ok(Plan::one(
            pid,
            Micro::new(mm_code::XCHG, self.entry_gla(va, 1), 0, 0),
            Finish::Unmapped { va, frame },
        ))
    }

    /// The plan of `World::mm_protect`.
    pub fn plan_protect(
        &mut self,
        pid: u32,
        va: u64,
        writable: bool,
        executable: bool,
    ) -> Result<Plan, MmError> {
        let e = self.leaf(pid, va)?;
        if e & bits::P == 0 {
            return Err(MmError::State(va));
        }
        let gla = self.entry_gla(va, 1);
        let mut micros = vec![if writable {
            Micro::new(mm_code::LOCK_OR, gla, bits::RW, 0)
        } else {
            Micro::new(mm_code::LOCK_AND, gla, !bits::RW, 0)
        }];
        if (e & bits::XD == 0) != executable {
            micros.push(Micro::new(mm_code::LOCK_XOR, gla, bits::XD, 0));
        }
        Ok(Plan {
            pid,
            micros,
            finish: Finish::Nothing,
        })
    }

    /// The plan of `World::mm_set_caching`.
    pub fn plan_set_caching(
        &mut self,
        pid: u32,
        va: u64,
        attrs: u64,
        form: u32,
    ) -> Result<Plan, MmError> {
        let e = self.leaf(pid, va)?;
        if e & bits::P == 0 {
            return Err(MmError::State(va));
        }
        let new = (e & !bits::CACHING) | (attrs & bits::CACHING);
        let gla = self.entry_gla(va, 1);
        let m = match form % 3 {
            0 => Micro::new(mm_code::MOV, gla, new, 0),
            1 => Micro::new(mm_code::LOCK_CMPXCHG, gla, new, e),
            _ => Micro::new(mm_code::LOCK_XOR, gla, e ^ new, 0),
        };
        Ok(Plan::one(pid, m, Finish::Nothing))
    }

    /// The plan of a directed entry write ([`EntryInsn`]): the entry of `level` (1: the PTE,
    /// up to 4: the PML4E) that maps `va`, written once with `insn`, whose operand is `arg`.
    pub fn plan_write_entry(
        &mut self,
        pid: u32,
        va: u64,
        level: u8,
        insn: EntryInsn,
        arg: u64,
    ) -> Result<Plan, MmError> {
        if !(1..=4).contains(&level) {
            return Err(MmError::State(va));
        }
        let (e, _) = self.entry_value(pid, va, level).ok_or(MmError::State(va))?;
        let gla = self.entry_gla(va, level);
        let m = match insn {
            EntryInsn::Stosq => Micro::new(mm_code::STOSQ, gla, 0, e ^ arg),
            EntryInsn::Mov32 => Micro::new(mm_code::MOV32, gla, (e ^ arg) & 0xFFFF_FFFF, 0),
            EntryInsn::BtsReg => Micro::new(mm_code::LOCK_BTS_REG, gla, arg, 0),
        };
        Ok(Plan::one(pid, m, Finish::Nothing))
    }

    /// The plan of a page-table move: the page table that maps `va` (its level-1 table) is
    /// copied to `frame`, in low memory ([`layout::LOW_FRAMES_END`]), and the PDE is pointed
    /// at the copy with one MOV.
    pub fn plan_move_table(&mut self, pid: u32, va: u64, frame: u64) -> Result<Plan, MmError> {
        const ADDR: u64 = 0x000F_FFFF_FFFF_F000;
        let (pde, _) = self.entry_value(pid, va, 2).ok_or(MmError::State(va))?;
        let ps = 1 << 7;
        if pde & bits::P == 0 || pde & ps != 0 || frame & 0xFFF != 0 {
            return Err(MmError::State(va));
        }
        if frame >= layout::LOW_FRAMES_END.0 {
            return Err(MmError::State(frame));
        }
        let mut table = [0u8; 4096];
        self.machine.mem.read(Gpa(pde & ADDR), &mut table);
        self.machine.mem.write(Gpa(frame), &table);
        let gla = self.entry_gla(va, 2);
        let m = Micro::new(mm_code::MOV, gla, (pde & !ADDR) | frame, 0);
        Ok(Plan::one(pid, m, Finish::Nothing))
    }

    /// The plan of `World::mm_trim`.
    pub fn plan_trim(&mut self, pid: u32, va: u64) -> Result<Plan, MmError> {
        self.leaf(pid, va)?;
        Ok(Plan::one(
            pid,
            Micro::new(mm_code::LOCK_BTR_A, self.entry_gla(va, 1), 0, 0),
            Finish::Nothing,
        ))
    }

    /// The plan of `World::mm_swap_out`; the contents go to the pagefile now.
    pub fn plan_swap_out(&mut self, pid: u32, va: u64) -> Result<Plan, MmError> {
        let e = self.leaf(pid, va)?;
        if e & bits::P == 0 {
            return Err(MmError::State(va));
        }
        let frame = Gpa(e & 0x000F_FFFF_FFFF_F000);
        let mut page = Box::new([0u8; 4096]);
        self.machine.mem.read(frame, &mut page[..]);
        self.guest.pagefile.insert((pid, va), page);
        let swap_entry = (((va >> 12) & 0xF_FFFF) << 12) | bits::SWAPPED;
        Ok(Plan::one(
            pid,
            Micro::new(mm_code::MOV, self.entry_gla(va, 1), swap_entry, 0),
            Finish::SwappedOut { va, frame },
        ))
    }

    /// The plan of `World::mm_swap_in`; the new frame gets the contents now.
    pub fn plan_swap_in(&mut self, pid: u32, va: u64) -> Result<Plan, MmError> {
        self.process(pid)?;
        let Some(page) = self.guest.pagefile.remove(&(pid, va)) else {
            return Err(MmError::State(va));
        };
        let frame = self.zeroed_frame(false)?;
        self.machine.mem.write(frame, &page[..]);
        let us = if va >> 63 == 0 { bits::US } else { 0 };
        let value = frame.0 | bits::P | bits::RW | us;
        Ok(Plan::one(
            pid,
            Micro::new(mm_code::MOV, self.entry_gla(va, 1), value, 0),
            Finish::SwappedIn { va, frame },
        ))
    }

    fn leaf(&self, pid: u32, va: u64) -> Result<u64, MmError> {
        self.entry_value(pid, va, 1)
            .map(|(e, _)| e)
            .ok_or(MmError::State(va))
    }
}

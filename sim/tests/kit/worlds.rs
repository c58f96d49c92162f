//! World builders: the configurations and the `Fx` world whose guest executes real instructions.

use super::asm::MOV_STORE;
use super::spec::{P, S};
use super::ve::run_to;
use vesim::quirks::Quirks;
use vesim::world::{World, WorldConfig};
use vesim_model::paging::{self_map_entry_address, PteFlags};
use vesim_model::vcpu::Gpr;
use vesim_model::{Gla, Gpa};

/// Where the fixture's code and data pages live (kernel half, PML4 index 0x1F0, away from the
/// guest model's own pages).
pub const CODE: u64 = 0xFFFF_F800_0030_0000;
pub const DATA: u64 = 0xFFFF_F800_0040_0000;
/// A second data page at PML4 index 0x100, with its own PDPT, PD and PT, so each of its tables
/// can be write-protected on its own.
pub const DATA2: u64 = 0xFFFF_8000_0000_0000;
/// A user-half page (PML4 index 0x20).
pub const USER_PAGE: u64 = 0x0000_1000_0000_0000;
/// A present, writable, accessed, dirty PTE value (PFN 0x1234).
pub const OLD: u64 = 0x0000_0000_0123_4063;
/// Frames no guest window hands out (layout.rs): free for remaps and new tables.
pub const FREE_FRAME: Gpa = Gpa(0x0500_0000);
pub const FREE_FRAME2: Gpa = Gpa(0x0500_1000);

/// The default world of quirk setting `q`.
pub fn config(q: Quirks) -> WorldConfig {
    WorldConfig {
        quirks: q,
        ..WorldConfig::default()
    }
}

/// ... with `vcpus` VCPUs.
pub fn config_n(q: Quirks, vcpus: usize) -> WorldConfig {
    let mut c = config(q);
    c.guest.vcpus = vcpus;
    c
}

/// Where `Fx` leaves the VCPUs' RIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rip {
    /// Where the world put it.
    Kept,
    /// `CODE`, on every VCPU.
    AtCode,
}

/// A world with a code page at `CODE`, a data page at `DATA`, and the page-table page that maps
/// `DATA` write-protected and convertible through one monitor on its entry 256 (as `vesim agent`
/// does). Entry k of that table maps `DATA + k * 0x1000`.
pub struct Fx {
    pub w: World,
    /// DATA's page-table page.
    pub pt: Gpa,
    /// CODE's frame.
    pub code: Gpa,
    /// DATA's frame.
    pub data: Gpa,
}

/// The self-map address of entry k of DATA's page table (the PTE of `DATA + k * 0x1000`).
pub fn egla(k: u64) -> u64 {
    self_map_entry_address(S, Gla(DATA + k * 0x1000), 1).0
}

impl Fx {
    /// The fixture in a new world of configuration `c`.
    pub fn new(c: WorldConfig, rip: Rip) -> Fx {
        let w = World::new(c).unwrap();
        Fx::on(w, rip)
    }

    /// The fixture in world `w`.
    pub fn on(mut w: World, rip: Rip) -> Fx {
        let code = w
            .guest
            .map_new(&mut w.machine, CODE, PteFlags::empty())
            .unwrap();
        let data = w
            .guest
            .map_new(&mut w.machine, DATA, PteFlags::WRITABLE)
            .unwrap();
        let pt = w.guest.entry_gpa(&w.machine, DATA, 1).unwrap().page_base();
        w.engine().place_monitor(pt.wrapping_add(256 * 8));
        w.engine().commit_hooks();
        if rip == Rip::AtCode {
            for v in &mut w.vcpus {
                v.rip = CODE;
            }
        }
        Fx { w, pt, code, data }
    }

    /// The GPA of entry k of DATA's table.
    pub fn e(&self, k: u64) -> Gpa {
        self.pt.wrapping_add(8 * k)
    }
    /// The value of entry k.
    pub fn get(&self, k: u64) -> u64 {
        self.w.machine.mem.read_u64(self.e(k))
    }
    /// Writes entry k directly (no guest instruction).
    pub fn set(&mut self, k: u64, v: u64) {
        let e = self.e(k);
        self.w.machine.mem.write_u64(e, v);
    }
    /// Places `bytes` at CODE and points every VCPU at it.
    pub fn code(&mut self, bytes: &[u8]) {
        self.w.machine.mem.write(self.code, bytes);
        for v in &mut self.w.vcpus {
            v.rip = CODE;
        }
    }
    /// `mov [rax], rbx` on entry k with the new value in RBX.
    pub fn mov_entry(&mut self, cpu: usize, k: u64, new: u64) {
        self.code(&[0x48, 0x89, 0x18]);
        let v = &mut self.w.vcpus[cpu];
        v.set_reg(Gpr::Rax, egla(k));
        v.set_reg(Gpr::Rbx, new);
    }
    /// Places `bytes` at `CODE + 0x100 * cpu`, points VCPU `cpu` at them in the System CR3
    /// with `regs`, and returns that RIP.
    pub fn prep(&mut self, cpu: usize, bytes: &[u8], regs: &[(Gpr, u64)]) -> u64 {
        let off = 0x100 * cpu as u64;
        self.w.machine.mem.write(self.code.wrapping_add(off), bytes);
        let cr3 = self.w.guest.cr3;
        let v = &mut self.w.vcpus[cpu];
        v.cr3 = cr3;
        v.rip = CODE + off;
        for (r, x) in regs {
            v.set_reg(*r, *x);
        }
        CODE + off
    }
    /// Prepares `mov [rax], rbx` writing `new` at the self-map address `gla`.
    pub fn prep_store(&mut self, cpu: usize, gla: u64, new: u64) -> u64 {
        self.prep(cpu, &MOV_STORE, &[(Gpr::Rax, gla), (Gpr::Rbx, new)])
    }
    /// Writes `new` into entry k of DATA's table with a real MOV on VCPU `cpu`.
    pub fn write_entry(&mut self, cpu: usize, k: u64, new: u64) {
        let at = self.prep_store(cpu, egla(k), new);
        run_to(&mut self.w, cpu, at + 3, 10_000);
    }
}

/// The qword at `g`.
pub fn mem(w: &World, g: Gpa) -> u64 {
    w.machine.mem.read_u64(g)
}

/// The physical address of a guest-linear address in the System (kernel) CR3.
pub fn phys(w: &World, gla: u64) -> Gpa {
    w.guest.phys(&w.machine, gla).expect("mapped")
}

/// ORs `bits` into every present entry of the table page at `table`.
pub fn or_present_entries(w: &mut World, table: Gpa, bits: u64) {
    for i in 0..512 {
        let g = table.wrapping_add(8 * i);
        let v = w.machine.mem.read_u64(g);
        if v & P != 0 {
            w.machine.mem.write_u64(g, v | bits);
        }
    }
}

/// Maps `USER_PAGE` (user, writable) and returns the GPAs of its four entries, PML4E first.
pub fn map_user_page(w: &mut World) -> [Gpa; 4] {
    w.guest
        .map_new(
            &mut w.machine,
            USER_PAGE,
            PteFlags::USER | PteFlags::WRITABLE,
        )
        .unwrap();
    [4, 3, 2, 1].map(|l| w.guest.entry_gpa(&w.machine, USER_PAGE, l).unwrap())
}

/// The entries (PML4E first) of DATA's translation.
pub fn data_entries(w: &World) -> [Gpa; 4] {
    [4, 3, 2, 1].map(|l| w.guest.entry_gpa(&w.machine, DATA, l).unwrap())
}

//! Snapshot and reset: a world taken back to an earlier state in time proportional to what
//! changed since, not to its size.
//!
//! [`World::snapshot`] marks the machine (guest memory and the EPTP list log what they
//! overwrite from then on: [`vesim_model::memory::GuestMemory::mark`],
//! [`vesim_model::ept::Ept::mark`]) and copies the rest of the world: the VCPUs, the guest's
//! and introcore's bookkeeping, the counters and the event log. [`World::reset`] rewinds the
//! machine (one 4 KiB copy per frame dirtied and one entry per EPT change) and restores the
//! rest field by field, reusing the world's allocations. The guest's and introcore's large
//! tables (page-table builder, processes, free pages, pagefile, GPA hooks, page-table and
//! translation monitors) are [`vesim_model::tracked::Tracked`]: copied back only when a case
//! borrowed them mutably. The translation cache starts empty after a reset (it never changes
//! a result). A snapshot belongs to the last mark of its world: a reset with any other is
//! refused.

use super::World;

/// A world as [`World::snapshot`] found it, less memory and EPT (which the world's machine
/// keeps as a mark).
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Every field but the machine, whose place holds an empty one.
    rest: World,
    /// The machine's mark this snapshot goes with.
    mark: u64,
}

/// A reset that cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// The world was marked again since (or the snapshot is another world's).
    #[error("the snapshot is not the world's last one (mark {snapshot}, world at mark {world})")]
    Stale {
        /// The snapshot's mark.
        snapshot: u64,
        /// The world's last mark.
        world: u64,
    },
}

/// A world used for case after case: each [`Reusable::run`] starts from the state the world
/// had when it was made, reset in time proportional to what the previous case changed.
#[derive(Debug)]
pub struct Reusable {
    world: World,
    snapshot: Snapshot,
    used: bool,
}

impl Reusable {
    /// Snapshots `world` as the state every run starts from.
    pub fn new(mut world: World) -> Reusable {
        let snapshot = world.snapshot();
        Reusable {
            world,
            snapshot,
            used: false,
        }
    }

    /// The world as the last run left it.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// The world as every run starts from it, less its machine (memory and EPT are the
    /// machine's mark).
    pub fn start(&self) -> &World {
        &self.snapshot.rest
    }

    /// Resets the world if a run used it, then runs `case` on it. During the run the world is
    /// marked at the snapshot, so `case` can read what it dirtied
    /// ([`vesim_model::memory::GuestMemory::dirtied`]); it must not take a snapshot itself
    /// (the next reset is then refused).
    pub fn run<R>(&mut self, case: impl FnOnce(&mut World) -> R) -> Result<R, SnapshotError> {
        if self.used {
            self.world.reset(&self.snapshot)?;
        }
        self.used = true;
        Ok(case(&mut self.world))
    }
}

impl World {
    /// Takes the snapshot [`World::reset`] returns to. Any earlier snapshot of this world can
    /// no longer be reset to.
    pub fn snapshot(&mut self) -> Snapshot {
        self.machine.mark();
        self.guest.clean();
        self.intro.clean();
        let machine = std::mem::take(&mut self.machine);
        let rest = self.clone();
        self.machine = machine;
        Snapshot {
            rest,
            mark: self.machine.mem.marks(),
        }
    }

    /// Returns the world to `snapshot`, in time proportional to the guest frames and EPT
    /// entries changed since (plus a copy of the small rest). The snapshot stays valid.
    pub fn reset(&mut self, snapshot: &Snapshot) -> Result<(), SnapshotError> {
        let world = self.machine.mem.marks();
        if world != snapshot.mark {
            return Err(SnapshotError::Stale {
                snapshot: snapshot.mark,
                world,
            });
        }
        self.machine.rewind();
        self.restore(&snapshot.rest);
        Ok(())
    }

    /// Every field but the machine back as `rest` has it, reusing this world's allocations;
    /// the guest's and introcore's large tables are copied only where they changed.
    fn restore(&mut self, rest: &World) {
        let World {
            machine: _,
            vcpus,
            stopped,
            guest,
            intro,
            quirks,
            counters,
            events,
            tsc,
            ve,
            last_ve_walk,
            cache_log,
            completed,
        } = self;
        vcpus.clone_from(&rest.vcpus);
        stopped.clone_from(&rest.stopped);
        guest.restore(&rest.guest);
        intro.restore(&rest.intro);
        quirks.clone_from(&rest.quirks);
        counters.clone_from(&rest.counters);
        events.clone_from(&rest.events);
        *tsc = rest.tsc;
        *ve = rest.ve;
        last_ve_walk.clone_from(&rest.last_ve_walk);
        cache_log.clone_from(&rest.cache_log);
        completed.clone_from(&rest.completed);
    }

    /// The fields in which two worlds differ, by name (empty: equal in every field: memory,
    /// EPT, machine options, VCPUs, stop states, guest, introcore, quirks, counters, events,
    /// clock, #VE switch, the per-VCPU #VE kinds, the cache log and the completed-instruction
    /// record).
    pub fn differences(&self, other: &World) -> Vec<&'static str> {
        // Every field by name, so that a new field cannot be left out of the comparison.
        let World {
            machine,
            vcpus,
            stopped,
            guest,
            intro,
            quirks,
            counters,
            events,
            tsc,
            ve,
            last_ve_walk,
            cache_log,
            completed,
        } = self;
        let mut d = Vec::new();
        let mut field = |name, same: bool| {
            if !same {
                d.push(name);
            }
        };
        field("memory", machine.mem == other.machine.mem);
        field("ept", machine.ept == other.machine.ept);
        field("machine config", machine.config == other.machine.config);
        field("vcpus", *vcpus == other.vcpus);
        field("stopped", *stopped == other.stopped);
        field("guest", *guest == other.guest);
        field("introcore", *intro == other.intro);
        field("quirks", *quirks == other.quirks);
        field("counters", *counters == other.counters);
        field("events", *events == other.events);
        field("tsc", *tsc == other.tsc);
        field("ve", *ve == other.ve);
        field("last #VE kinds", *last_ve_walk == other.last_ve_walk);
        field("cache log", *cache_log == other.cache_log);
        field("completed", *completed == other.completed);
        d
    }
}

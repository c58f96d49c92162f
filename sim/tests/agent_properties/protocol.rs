//! 3. Protocol (I4): the semaphore, no nesting and the view returned to, after every step.

use crate::kit::{props::*, pt_world::*};
use crate::PROTOCOL_CASES;
use proptest::prelude::*;
use vesim::agent::rip as agent_rip;
use vesim::layout;
use vesim::world::{Event, World};
use vesim_model::ve_info::VeInfo;
use vesim_model::VcpuId;

/// I4 bookkeeping of one VCPU.
#[derive(Clone, Copy, Debug, Default)]
struct Protocol {
    /// Between a #VE delivery and the agent's exit step.
    busy: bool,
    /// The view the VCPU was in when the #VE was delivered.
    from: Option<vesim_model::ViewId>,
}

fn semaphore(w: &World, cpu: usize) -> u32 {
    w.ve_page(VcpuId(cpu))
        .map_or(0, |page| VeInfo::semaphore(&w.machine.mem, page))
}

proptest! {
    #![proptest_config(config(PROTOCOL_CASES))]

    /// I4: after every step, the semaphore is non-zero exactly from the #VE delivery to the
    /// agent's exit step, no #VE is delivered while it is set, and the VCPU is back in the
    /// view it came from (never the protected view) once the agent returned.
    #[test]
    fn i4_semaphore_nesting_and_view(sc in scenario(profile().boxed(), 0.3)) {
        let mut pw = build(&sc);
        let n = pw.w.vcpus.len();
        let protected = pw.w.intro.protected;
        let exit_rip = layout::AGENT_GVA + agent_rip::STUB_EXIT;
        let return_rip = layout::AGENT_GVA + agent_rip::STUB_RETURN;
        let mut st = vec![Protocol::default(); n];
        for step in 0..SCENARIO_STEPS_MAX {
            let Some(cpu) = pw.pick(sc.schedule[step % sc.schedule.len()]) else { break };
            let rip_before = pw.w.vcpus[cpu].rip;
            let view_before = pw.w.vcpus[cpu].eptp_index;
            let events_before = pw.w.events.len();
            let r = pw.w.step(VcpuId(cpu));
            prop_assert!(r.is_ok(), "step {}: VCPU {} stopped: {:?}", step, cpu, r);
            let ves = pw.w.events[events_before..]
                .iter()
                .filter(|e| matches!(e, Event::Ve { cpu: c, .. } if c.0 == cpu))
                .count();
            prop_assert!(ves <= 1);
            if ves == 1 {
                prop_assert!(!st[cpu].busy, "step {}: a #VE was delivered while the semaphore was set", step);
                prop_assert_eq!(semaphore(&pw.w, cpu), 0xFFFF_FFFF);
                st[cpu] = Protocol { busy: true, from: Some(view_before) };
            }
            if rip_before == exit_rip {
                prop_assert!(st[cpu].busy, "step {}: exit step without a #VE", step);
                st[cpu].busy = false;
            }
            for (c, state) in st.iter().enumerate() {
                prop_assert_eq!(
                    semaphore(&pw.w, c) != 0,
                    state.busy,
                    "step {}: VCPU {} semaphore {:#x} at RIP {:#x}",
                    step, c, semaphore(&pw.w, c), pw.w.vcpus[c].rip
                );
                if !pw.in_agent(c) {
                    prop_assert_ne!(pw.w.vcpus[c].eptp_index, protected,
                        "step {}: VCPU {} runs guest code in the protected view", step, c);
                }
            }
            if rip_before == return_rip {
                prop_assert!(!pw.in_agent(cpu));
                prop_assert_eq!(Some(pw.w.vcpus[cpu].eptp_index), st[cpu].from,
                    "step {}: VCPU {} did not return to its view", step, cpu);
            }
        }
    }
}

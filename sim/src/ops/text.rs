//! The text form of a guest operation: one line of `kind key=value ...`, written by
//! `Display` and read back by `FromStr` (scenario files, trace files, `list:` operations).

use super::GuestOp;
use crate::attack::Attack;
use crate::guest::mm::EntryInsn;

impl std::fmt::Display for GuestOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            GuestOp::CreateProcess { protected } => {
                write!(f, "create protected={}", u8::from(protected))
            }
            GuestOp::Map { pid, va, flags } => {
                write!(f, "map pid={pid} va={va:#x} flags={flags:#x}")
            }
            GuestOp::Unmap { pid, va } => write!(f, "unmap pid={pid} va={va:#x}"),
            GuestOp::Protect {
                pid,
                va,
                writable,
                executable,
            } => write!(
                f,
                "protect pid={pid} va={va:#x} writable={} executable={}",
                u8::from(writable),
                u8::from(executable)
            ),
            GuestOp::SetCaching {
                pid,
                va,
                attrs,
                form,
            } => {
                write!(
                    f,
                    "caching pid={pid} va={va:#x} attrs={attrs:#x} form={form}"
                )
            }
            GuestOp::Trim { pid, va } => write!(f, "trim pid={pid} va={va:#x}"),
            GuestOp::Write {
                pid,
                va,
                level,
                insn,
                arg,
            } => write!(
                f,
                "write pid={pid} va={va:#x} level={level} insn={} arg={arg:#x}",
                insn.name()
            ),
            GuestOp::MoveTable { pid, va, frame } => {
                write!(f, "movetable pid={pid} va={va:#x} frame={frame:#x}")
            }
            GuestOp::SwapOut { pid, va } => write!(f, "swapout pid={pid} va={va:#x}"),
            GuestOp::SwapIn { pid, va } => write!(f, "swapin pid={pid} va={va:#x}"),
            GuestOp::Touch {
                pid,
                va,
                write,
                value,
            } => {
                write!(
                    f,
                    "touch pid={pid} va={va:#x} write={} value={value:#x}",
                    u8::from(write)
                )
            }
            GuestOp::Hook { pid, va } => write!(f, "hook pid={pid} va={va:#x}"),
            GuestOp::Unload { delay } => write!(f, "unload delay={delay}"),
            GuestOp::Redeploy => f.write_str("redeploy"),
            GuestOp::Attack {
                pid,
                attack,
                arg,
                value,
            } => write!(
                f,
                "attack pid={pid} kind={} arg={arg:#x} value={value:#x}",
                attack.name()
            ),
        }
    }
}

impl std::str::FromStr for GuestOp {
    type Err = String;
    /// Parses the form [`GuestOp`]'s `Display` writes; every key must be present once and no
    /// other key may appear.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut words = s.split_whitespace();
        let kind = words.next().ok_or("an empty operation")?;
        let mut kv = std::collections::BTreeMap::new();
        let mut attack = None;
        let mut insn = None;
        for w in words {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| format!("'{w}' is not KEY=VALUE"))?;
            if kind == "attack" && k == "kind" {
                let names: Vec<&str> = Attack::ALL.iter().map(|(n, _)| *n).collect();
                let a = Attack::from_name(v).ok_or_else(|| {
                    format!("'{v}' is not an attack (one of {})", names.join(", "))
                })?;
                if attack.replace(a).is_some() {
                    return Err("key kind is given twice".into());
                }
                continue;
            }
            if kind == "write" && k == "insn" {
                let names: Vec<&str> = EntryInsn::ALL.iter().map(|(n, _)| *n).collect();
                let i = EntryInsn::from_name(v).ok_or_else(|| {
                    format!(
                        "'{v}' is not an entry-write instruction (one of {})",
                        names.join(", ")
                    )
                })?;
                if insn.replace(i).is_some() {
                    return Err("key insn is given twice".into());
                }
                continue;
            }
            let v = crate::text::parse_u64(v)?;
            if kv.insert(k, v).is_some() {
                return Err(format!("key {k} is given twice"));
            }
        }
        let mut take = |k: &str| kv.remove(k).ok_or_else(|| format!("{kind} needs {k}="));
        let narrow =
            |v: u64| u32::try_from(v).map_err(|_| format!("{v:#x} does not fit in 32 bits"));
        let op = match kind {
            "create" => GuestOp::CreateProcess {
                protected: take("protected")? != 0,
            },
            "map" => GuestOp::Map {
                pid: narrow(take("pid")?)?,
                va: take("va")?,
                flags: take("flags")?,
            },
            "unmap" => GuestOp::Unmap {
                pid: narrow(take("pid")?)?,
                va: take("va")?,
            },
            "protect" => GuestOp::Protect {
                pid: narrow(take("pid")?)?,
                va: take("va")?,
                writable: take("writable")? != 0,
                executable: take("executable")? != 0,
            },
            "caching" => GuestOp::SetCaching {
                pid: narrow(take("pid")?)?,
                va: take("va")?,
                attrs: take("attrs")?,
                form: narrow(take("form")?)?,
            },
            "write" => GuestOp::Write {
                pid: narrow(take("pid")?)?,
                va: take("va")?,
                level: match take("level")? {
                    l @ 1..=4 => l as u8,
                    l => return Err(format!("level={l} is not 1 to 4")),
                },
                insn: insn.ok_or("write needs insn=")?,
                arg: take("arg")?,
            },
            "movetable" => GuestOp::MoveTable {
                pid: narrow(take("pid")?)?,
                va: take("va")?,
                frame: take("frame")?,
            },
            "trim" => GuestOp::Trim {
                pid: narrow(take("pid")?)?,
                va: take("va")?,
            },
            "swapout" => GuestOp::SwapOut {
                pid: narrow(take("pid")?)?,
                va: take("va")?,
            },
            "swapin" => GuestOp::SwapIn {
                pid: narrow(take("pid")?)?,
                va: take("va")?,
            },
            "touch" => GuestOp::Touch {
                pid: narrow(take("pid")?)?,
                va: take("va")?,
                write: take("write")? != 0,
                value: take("value")?,
            },
            "hook" => GuestOp::Hook {
                pid: narrow(take("pid")?)?,
                va: take("va")?,
            },
            "unload" => GuestOp::Unload {
                delay: narrow(take("delay")?)?,
            },
            "redeploy" => GuestOp::Redeploy,
            "attack" => GuestOp::Attack {
                pid: narrow(take("pid")?)?,
                attack: attack.ok_or("attack needs kind=")?,
                arg: take("arg")?,
                value: take("value")?,
            },
            other => return Err(format!("'{other}' is not an operation")),
        };
        if let Some(k) = kv.keys().next() {
            return Err(format!("{kind} has no key {k}"));
        }
        Ok(op)
    }
}

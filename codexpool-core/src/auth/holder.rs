//! Who holds a refresh lease: the name a pool writes into the lease rows it takes, and whether
//! the process behind another name still exists. A lease whose holder is gone (it crashed or
//! was killed mid-refresh) is free at once instead of after its TTL.
//!
//! On Linux a name carries the process id, its start time, the boot id and the PID namespace:
//! `<pid>-<random>/linux/<boot id>/<pid namespace>/<start time>`. A holder is gone when it was
//! named on this boot and in this PID namespace and `/proc/<pid>` is missing (on a `/proc` that
//! shows every user's processes) or belongs to a process that started at another time (the id
//! was reused). Anything else — another machine,
//! another container, another system, a name written by an older codexpool — cannot be judged,
//! and its lease runs out by its TTL as before.

/// A fresh holder name for this process.
pub(crate) fn this_process() -> String {
    let base = format!("{}-{}", std::process::id(), crate::id::new_id());
    match linux::mark(std::process::id()) {
        Some(mark) => format!("{base}/linux/{mark}"),
        None => base,
    }
}

/// Whether the process that named itself `holder` is certainly gone.
pub(crate) fn is_gone(holder: &str) -> bool {
    linux::is_gone(holder)
}

#[cfg(target_os = "linux")]
mod linux {
    use std::sync::OnceLock;

    /// `<boot id>/<pid namespace>` of this process, read once.
    fn scope() -> Option<&'static str> {
        static SCOPE: OnceLock<Option<String>> = OnceLock::new();
        SCOPE
            .get_or_init(|| {
                let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
                let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
                let ns = ns
                    .to_str()?
                    .trim_start_matches("pid:")
                    .trim_matches(['[', ']']);
                let boot = boot.trim();
                (!boot.is_empty() && !ns.is_empty() && !boot.contains('/') && !ns.contains('/'))
                    .then(|| format!("{boot}/{ns}"))
            })
            .as_deref()
    }

    /// A process's start time (clock ticks after boot, field 22 of `/proc/<pid>/stat`);
    /// `Err(true)` when there is no such process, `Err(false)` when it cannot be told.
    fn start_time(pid: u32) -> Result<u64, bool> {
        let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(s) => s,
            Err(e) => {
                return Err(e.kind() == std::io::ErrorKind::NotFound && !proc_hides_others());
            }
        };
        // The command name (field 2) is in parentheses and may hold anything: count after it.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or(false)?;
        rest.split_whitespace()
            .nth(19)
            .and_then(|f| f.parse().ok())
            .ok_or(false)
    }

    /// Whether this process's `/proc` leaves out other users' processes (`hidepid=2`, or
    /// `invisible` as systemd's `ProtectProc=invisible` mounts it): a missing entry then proves
    /// nothing (a holder run by another user, say under sudo, is alive and unseen). Read once.
    fn proc_hides_others() -> bool {
        static HIDES: OnceLock<bool> = OnceLock::new();
        *HIDES.get_or_init(|| {
            std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| hides_others(&m))
        })
    }

    /// [`proc_hides_others`] from the text of a `mountinfo`: the mount on `/proc` (the fifth
    /// field) with `hidepid=2` or `hidepid=invisible` among its options (after ` - `).
    pub(super) fn hides_others(mountinfo: &str) -> bool {
        mountinfo.lines().any(|line| {
            line.split(' ').nth(4) == Some("/proc")
                && line.split_once(" - ").is_some_and(|(_, options)| {
                    options
                        .split([' ', ','])
                        .any(|o| o == "hidepid=2" || o == "hidepid=invisible")
                })
        })
    }

    /// `<boot id>/<pid namespace>/<start time>` of process `pid`.
    pub(super) fn mark(pid: u32) -> Option<String> {
        let start = start_time(pid).ok()?;
        Some(format!("{}/{start}", scope()?))
    }

    pub(super) fn is_gone(holder: &str) -> bool {
        let mut parts = holder.split('/');
        let (Some(head), Some("linux"), Some(boot), Some(ns), Some(start), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return false;
        };
        if scope() != Some(&format!("{boot}/{ns}")) {
            return false;
        }
        let Some(pid) = head
            .split_once('-')
            .and_then(|(p, _)| p.parse::<u32>().ok())
        else {
            return false;
        };
        let Ok(start) = start.parse::<u64>() else {
            return false;
        };
        match start_time(pid) {
            Ok(now) => now != start,
            Err(missing) => missing,
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod linux {
    pub(super) fn mark(_pid: u32) -> Option<String> {
        None
    }

    pub(super) fn is_gone(_holder: &str) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_strangers_cannot_be_judged() {
        let me = this_process();
        assert!(me.starts_with(&format!("{}-", std::process::id())), "{me}");
        assert!(!is_gone(&me));
        assert!(!is_gone("12345-abcdef"), "an older codexpool's name");
        assert!(!is_gone("other machine"));
        assert!(!is_gone(""));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_process_that_exited_or_whose_id_was_reused_is_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let name = format!("{pid}-x/linux/{}", linux::mark(pid).unwrap());
        assert!(!is_gone(&name), "alive (or a zombie until reaped)");
        child.wait().unwrap();
        assert!(is_gone(&name), "{name}");

        // Our own id with another start time: the id was reused.
        let me = this_process();
        let (head, _) = me.rsplit_once('/').unwrap();
        assert!(is_gone(&format!("{head}/1")));
        // Another boot or namespace: not ours to judge.
        let parts: Vec<&str> = me.split('/').collect();
        let other_boot = format!("{}/linux/other-boot/{}/{}", parts[0], parts[3], parts[4]);
        assert!(!is_gone(&other_boot));
        let gone_elsewhere = format!("{pid}-x/linux/other-boot/{}/1", parts[3]);
        assert!(!is_gone(&gone_elsewhere));
    }

    /// With `/proc` hiding other users' processes, a missing entry proves nothing.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_proc_that_hides_other_users_is_recognised() {
        let hidden = "22 27 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw,hidepid=invisible\n";
        assert!(linux::hides_others(hidden));
        assert!(linux::hides_others(&hidden.replace("invisible", "2")));
        // Entries that stay listed (only their contents are refused), or another mount.
        assert!(!linux::hides_others(&hidden.replace("invisible", "1")));
        assert!(!linux::hides_others(
            "22 27 0:21 / /proc rw,nosuid - proc proc rw\n30 22 0:5 / /proc/sys/fs/binfmt_misc rw - binfmt_misc x rw,hidepid=2\n"
        ));
    }
}

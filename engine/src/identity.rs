//! Whose process a `pipe.pid` label names. A pid means something only on the
//! same boot of the same kernel, in the same PID namespace: CI jobs that share a
//! Docker socket run pipe in other namespaces and on other machines, where a
//! `kill(pid, 0)` that finds nothing proves nothing.

use std::sync::OnceLock;

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The kernel's boot id: differs between machines and across reboots.
    pub boot: String,
    /// The PID namespace (`pid:[4026531836]`).
    pub pidns: String,
    pub uid: String,
    /// For people reading labels; never used to decide anything.
    pub host: String,
}

impl Identity {
    pub fn current() -> &'static Identity {
        static CURRENT: OnceLock<Identity> = OnceLock::new();
        CURRENT.get_or_init(|| Identity {
            boot: std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().trim().to_string(),
            pidns: std::fs::read_link("/proc/self/ns/pid").map(|p| p.display().to_string()).unwrap_or_default(),
            uid: nix::unistd::geteuid().to_string(),
            host: nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
        })
    }

    /// The labels that say whose process `pipe.pid` is, `pipe.pid` included.
    pub fn labels(&self) -> Vec<(String, String)> {
        [("pipe.boot", &self.boot), ("pipe.pidns", &self.pidns), ("pipe.uid", &self.uid), ("pipe.host", &self.host)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .chain([("pipe.pid".to_string(), std::process::id().to_string())])
            .collect()
    }

    /// True only when the labels name a process of this boot, PID namespace and
    /// user, and that process no longer exists. Anything else (older labels
    /// without an identity, another machine, another namespace, a pid that is
    /// alive or belongs to someone else) is not provably dead.
    pub fn provably_dead(&self, labels: &std::collections::HashMap<String, String>) -> bool {
        let ours = |key: &str, value: &str| labels.get(key).is_some_and(|v| !v.is_empty() && v == value);
        if !(ours("pipe.boot", &self.boot) && ours("pipe.pidns", &self.pidns) && ours("pipe.uid", &self.uid)) {
            return false;
        }
        let Some(pid) = labels.get("pipe.pid").and_then(|p| p.parse::<i32>().ok()) else { return false };
        pid > 0 && pid != std::process::id() as i32 && kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::Identity;

    fn labels(me: &Identity, pid: u32, pidns: &str) -> HashMap<String, String> {
        let mut l: HashMap<String, String> = me.labels().into_iter().collect();
        l.insert("pipe.pid".into(), pid.to_string());
        l.insert("pipe.pidns".into(), pidns.into());
        l
    }

    #[test]
    fn only_our_own_dead_processes_are_dead() {
        let me = Identity::current();
        let dead = {
            let mut c = std::process::Command::new("true").spawn().expect("spawn");
            let pid = c.id();
            c.wait().expect("wait");
            pid
        };
        assert!(me.provably_dead(&labels(me, dead, &me.pidns)));
        assert!(!me.provably_dead(&labels(me, std::process::id(), &me.pidns)), "alive");
        assert!(!me.provably_dead(&labels(me, dead, "pid:[1]")), "another PID namespace");
        let mut other_boot = labels(me, dead, &me.pidns);
        other_boot.insert("pipe.boot".into(), "another-machine".into());
        assert!(!me.provably_dead(&other_boot));
        let old: HashMap<String, String> = [("pipe.pid".to_string(), dead.to_string())].into();
        assert!(!me.provably_dead(&old), "labels without an identity prove nothing");
    }
}

//! A process group pipe started, with what proves it is still that group
//! before anything is signalled: the boot and PID namespace it was started in
//! (as containers carry them, `identity::Identity`) and its leader's start time.
//! A group id read back from `.pipe/` may be stale (a reboot, a reused pid) or
//! written by someone else (group 1 is `kill(-1)`): pipe signals it only when
//! that identity matches now.

use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::identity::Identity;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Recorded")]
pub struct ProcessGroup {
    pub id: i32,
    /// `None` only in journals of older versions, which recorded a bare id.
    pub boot: Option<String>,
    pub pidns: Option<String>,
    /// The leader's start time, in clock ticks after boot (`/proc/PID/stat` field 22).
    pub start: Option<u64>,
}

/// What a journal holds: a group with its identity, or a bare id (older versions).
#[derive(Deserialize)]
#[serde(untagged)]
enum Recorded {
    Full { id: i32, boot: Option<String>, pidns: Option<String>, start: Option<u64> },
    Bare(i32),
}

impl From<Recorded> for ProcessGroup {
    fn from(r: Recorded) -> ProcessGroup {
        match r {
            Recorded::Full { id, boot, pidns, start } => ProcessGroup { id, boot, pidns, start },
            Recorded::Bare(id) => ProcessGroup { id, boot: None, pidns: None, start: None },
        }
    }
}

/// Whether a recorded group may be signalled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// It is the group pipe started, and something of it is still there.
    Ours(Pid),
    /// Nothing of it is left: nothing to signal.
    Gone,
    /// It cannot be proven to be pipe's: why, in words. Never signalled.
    NotOurs(String),
}

impl ProcessGroup {
    /// The group led by `leader`, a child pipe has just spawned (not yet reaped).
    pub fn of_leader(leader: i32) -> ProcessGroup {
        let me = Identity::current();
        ProcessGroup {
            id: leader,
            boot: Some(me.boot.clone()),
            pidns: Some(me.pidns.clone()),
            start: stat(leader).map(|s| s.start),
        }
    }

    /// Whether this group is still the one pipe started.
    pub fn check(&self) -> Check {
        let id = self.id;
        if id <= 1 {
            return Check::NotOurs(format!(
                "process group {id} is not one pipe starts (pipe never records a group id below 2); not signalled"
            ));
        }
        let (Some(boot), Some(pidns), Some(start)) = (&self.boot, &self.pidns, self.start) else {
            return Check::NotOurs(format!(
                "process group {id} was recorded without an identity (by an older pipe, or by hand): \
                 it cannot be verified; not signalled (stop it yourself if it is the service)"
            ));
        };
        let me = Identity::current();
        if *boot != me.boot || *pidns != me.pidns {
            return Check::NotOurs(format!(
                "process group {id} was started on another boot or in another PID namespace: \
                 it is not the one pipe started; not signalled"
            ));
        }
        match stat(id) {
            Some(leader) if leader.start == start => Check::Ours(Pid::from_raw(id)),
            Some(leader) => Check::NotOurs(format!(
                "process group {id} is not the one pipe started (its leader started at {}, pipe's at {}); not signalled",
                clock(leader.start),
                clock(start)
            )),
            // The leader is gone (a `start` that daemonized): while any member
            // remains, the id cannot be reused, and every member of pipe's group
            // started after its leader.
            None => {
                match nix::sys::signal::killpg(Pid::from_raw(id), None) {
                    Err(nix::errno::Errno::ESRCH) => return Check::Gone,
                    Err(e) => {
                        return Check::NotOurs(format!(
                            "process group {id} cannot be signalled by pipe ({e}); not signalled"
                        ));
                    }
                    Ok(()) => {}
                }
                let members = members(id);
                if members.is_empty() {
                    Check::Gone
                } else if members.iter().all(|m| m.start >= start) {
                    Check::Ours(Pid::from_raw(id))
                } else {
                    Check::NotOurs(format!(
                        "process group {id} is not the one pipe started (a member started at {}, before pipe's leader at {}); not signalled",
                        clock(members.iter().map(|m| m.start).min().unwrap_or(0)),
                        clock(start)
                    ))
                }
            }
        }
    }
}

/// What `/proc/PID/stat` says of a process.
pub struct Stat {
    pub pid: i32,
    pub comm: String,
    pub state: String,
    pub pgrp: i32,
    /// Clock ticks after boot.
    pub start: u64,
}

pub fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// `pid (comm) state ppid pgrp …`: comm may hold spaces and parentheses.
fn parse_stat(text: &str) -> Option<Stat> {
    let (open, close) = (text.find('(')?, text.rfind(')')?);
    let pid = text[..open].trim().parse().ok()?;
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    Some(Stat {
        pid,
        comm: text.get(open + 1..close)?.to_string(),
        state: fields.first()?.to_string(),
        pgrp: fields.get(2)?.parse().ok()?,
        // Field 22 of the line is the 20th after `state`.
        start: fields.get(19)?.parse().ok()?,
    })
}

/// The processes of a group that are not zombies.
pub fn members(pgid: i32) -> Vec<Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .filter(|s| s.pgrp == pgid && s.state != "Z")
        .collect()
}

/// The process groups of this user in which some process carries `entry`
/// (`NAME=value`) in its environment, each with the identity its members
/// prove: what a killed pipe started and could not record. pipe's own group
/// and ids below 2 are never among them.
pub fn tagged(entry: &str) -> Vec<ProcessGroup> {
    use std::os::unix::fs::MetadataExt;
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let (uid, own) = (nix::unistd::getuid().as_raw(), nix::unistd::getpgrp().as_raw());
    let mut oldest: std::collections::BTreeMap<i32, u64> = std::collections::BTreeMap::new();
    for pid in dir.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()) {
        // Only this user's processes: run as root, /proc shows every environment.
        if std::fs::metadata(format!("/proc/{pid}")).map_or(true, |m| m.uid() != uid) {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if !env.split(|b| *b == 0).any(|e| e == entry.as_bytes()) {
            continue;
        }
        match stat(pid) {
            Some(s) if s.state != "Z" && s.pgrp > 1 && s.pgrp != own => {
                let start = oldest.entry(s.pgrp).or_insert(s.start);
                *start = (*start).min(s.start);
            }
            _ => {}
        }
    }
    let me = Identity::current();
    oldest
        .into_iter()
        .map(|(id, start)| ProcessGroup {
            id,
            boot: Some(me.boot.clone()),
            pidns: Some(me.pidns.clone()),
            // A live leader proves the group by its own start time.
            start: Some(stat(id).map_or(start, |leader| leader.start)),
        })
        .collect()
}

/// A start time as a wall-clock time, for people.
fn clock(ticks: u64) -> String {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100).max(1) as u64;
    let btime = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok()));
    match btime {
        Some(b) => {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(b * 1000 + ticks * 1000 / hz);
            humantime::format_rfc3339_millis(at).to_string()
        }
        None => format!("{ticks} ticks after boot"),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    #[test]
    fn only_the_group_pipe_started_is_ours() {
        let mut child = std::process::Command::new("sleep").arg("30").process_group(0).spawn().expect("spawn sleep");
        let id = child.id() as i32;
        let g = ProcessGroup::of_leader(id);
        assert_eq!(g.check(), Check::Ours(Pid::from_raw(id)));
        let later = ProcessGroup { start: g.start.map(|s| s + 1), ..g.clone() };
        assert!(matches!(later.check(), Check::NotOurs(why) if why.contains("is not the one pipe started")));
        let one = ProcessGroup { id: 1, ..g.clone() };
        assert!(matches!(one.check(), Check::NotOurs(_)));
        let bare: ProcessGroup = serde_json::from_str(&id.to_string()).expect("bare id");
        assert!(matches!(bare.check(), Check::NotOurs(why) if why.contains("without an identity")));
        let other_boot = ProcessGroup { boot: Some("another".into()), ..g.clone() };
        assert!(matches!(other_boot.check(), Check::NotOurs(_)));
        let back: ProcessGroup = serde_json::from_str(&serde_json::to_string(&g).expect("json")).expect("parse");
        assert_eq!(back, g);
        child.kill().expect("kill");
        child.wait().expect("wait");
        assert_eq!(g.check(), Check::Gone);
    }

    #[test]
    fn stat_reads_names_with_parentheses_and_spaces() {
        let line = "42 (a (b) c) S 1 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0";
        let s = parse_stat(line).expect("parse");
        assert_eq!((s.pid, s.comm.as_str(), s.pgrp, s.start), (42, "a (b) c", 42, 777));
    }
}

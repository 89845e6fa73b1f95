//! Who holds a slot's port. A slot is started only once its own instance is
//! stopped; a port still listening then belongs to something else — another
//! checkout's journey, a service started by hand — and the deploy says which
//! process, instead of the instance's own bind error (or a health check that
//! reaches the stranger).

use std::time::{Duration, Instant};

/// How long a port may take to be let go (Docker's proxy of a removed container).
const SETTLE: Duration = Duration::from_secs(2);

/// The process listening on `port` once `SETTLE` has passed, in words;
/// `None` when nothing listens.
pub async fn held(port: u16) -> Option<String> {
    let started = Instant::now();
    loop {
        // Two small procfs reads: not worth a blocking thread.
        let inode = listening(port)?;
        if started.elapsed() >= SETTLE {
            return Some(tokio::task::spawn_blocking(move || owner(inode)).await.unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The socket inode of a listener on `port` (any address), IPv4 or IPv6.
fn listening(port: u16) -> Option<u64> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|t| listener(&std::fs::read_to_string(t).unwrap_or_default(), port))
}

/// Lines are `sl local rem st … inode …`; `0A` is LISTEN.
fn listener(table: &str, port: u16) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local = fields.get(1)?.rsplit_once(':')?.1;
        (fields.get(3) == Some(&"0A") && u16::from_str_radix(local, 16).ok() == Some(port))
            .then(|| fields.get(9)?.parse().ok())
            .flatten()
    })
}

/// `pid 1234 (nginx)`: the process whose descriptor is the socket, as far as
/// this user may look.
fn owner(inode: u64) -> String {
    let socket = format!("socket:[{inode}]");
    let found = std::fs::read_dir("/proc").ok().and_then(|procs| {
        procs.flatten().find_map(|p| {
            let pid: u32 = p.file_name().to_str()?.parse().ok()?;
            let fds = std::fs::read_dir(p.path().join("fd")).ok()?;
            fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == socket.as_str())).then(
                || {
                    let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                    format!("pid {pid} ({})", crate::step::log::sanitize(comm.trim()))
                },
            )
        })
    });
    found.unwrap_or_else(|| "a process pipe may not look at (another user's)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_found_with_its_process() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1\n\
            1: 0100007F:1F92 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1\n";
        assert_eq!(listener(table, 0x1F91), Some(4242));
        assert_eq!(listener(table, 0x1F92), None, "a connection is not a listener");
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = held.local_addr().expect("addr").port();
        let inode = listening(port).expect("the listener is seen");
        assert!(owner(inode).starts_with(&format!("pid {} (", std::process::id())), "{}", owner(inode));
        drop(held);
        assert_eq!(listening(port), None);
    }
}

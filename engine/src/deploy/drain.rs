//! Draining: the old instance may be stopped only once traffic has provably
//! left it, not after a fixed sleep. On this machine that is readable from the
//! kernel: the established TCP connections to (or from) the instance's port.

use std::time::{Duration, Instant};

/// Polls between reads of the connection tables.
const POLL: Duration = Duration::from_millis(50);
/// Reads in a row that must find no connection.
const QUIET: u32 = 3;

/// How a drain ended.
pub struct Drained {
    pub waited: Duration,
    /// Connections still open when `bound` ran out (0: drained).
    pub left: usize,
}

/// Waits until no established connection uses `port` (three reads in a row),
/// or `bound` passes.
pub async fn drain(port: u16, bound: Duration) -> Drained {
    let started = Instant::now();
    let mut quiet = 0;
    loop {
        let open = established(port);
        quiet = if open == 0 { quiet + 1 } else { 0 };
        if quiet >= QUIET {
            return Drained { waited: started.elapsed(), left: 0 };
        }
        if started.elapsed() >= bound {
            return Drained { waited: started.elapsed(), left: open };
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Established TCP connections whose local or remote port is `port`, IPv4 and IPv6.
pub fn established(port: u16) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .map(|t| count(&std::fs::read_to_string(t).unwrap_or_default(), port))
        .sum()
}

/// Lines are `sl local rem st …` with addresses as `HEXIP:HEXPORT` and the
/// state in hex (`01`: established).
fn count(table: &str, port: u16) -> usize {
    let port_of = |addr: &str| addr.rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3
                && fields[3] == "01"
                && (port_of(fields[1]) == Some(port) || port_of(fields[2]) == Some(port))
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_established_connections_of_a_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
            0: 0100007F:1F91 00000000:0000 0A 00000000:00000000\n\
            1: 0100007F:1F91 0100007F:C350 01 00000000:00000000\n\
            2: 0100007F:C351 0100007F:1F91 01 00000000:00000000\n\
            3: 0100007F:1F92 0100007F:C352 01 00000000:00000000\n";
        assert_eq!(count(table, 0x1F91), 2, "the listener does not count; both ends of a connection do");
        assert_eq!(count(table, 0x1F92), 1);
        assert_eq!(count(table, 80), 0);
    }

    #[test]
    fn a_real_connection_is_seen_and_its_end_too() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        assert!(super::established(port) >= 1);
        drop((client, server));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(super::established(port), 0);
    }
}

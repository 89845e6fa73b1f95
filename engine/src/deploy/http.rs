//! Plain HTTP/1.1 GETs for verifying and probing a deployment through its
//! public URL (hyper's client connection API: pipe decides which requests
//! share a connection, which is what tells a reload's closed keep-alive
//! connection apart from a failed request).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// A parsed `http://host:port/path` target.
#[derive(Clone, Debug)]
pub struct Target {
    pub authority: String,
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("`{url}`: only http:// URLs can be probed"));
        }
        let authority = uri.authority().ok_or(format!("`{url}` has no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        Ok(Target {
            authority: format!("{}:{port}", authority.host()),
            path: if path.is_empty() { "/".into() } else { path.into() },
        })
    }
}

/// One answer.
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// A client connection that may carry many requests, one at a time.
pub struct Connection {
    sender: SendRequest<Empty<Bytes>>,
    /// Requests answered on it: a failure on a used connection may be the
    /// server closing it, not the request failing.
    pub used: u64,
}

/// How a request failed.
pub enum Failure {
    /// The connection was closed before an answer began (a reused keep-alive
    /// connection a proxy's reload closed): a browser sends such a GET again.
    Closed,
    Error(String),
}

impl Connection {
    pub async fn open(target: &Target, timeout: Duration) -> Result<Connection, String> {
        let connect = tokio::net::TcpStream::connect(&target.authority);
        let stream = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| format!("connecting to {} timed out", target.authority))?
            .map_err(|e| format!("cannot connect to {}: {e}", target.authority))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {}: {e}", target.authority))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Connection { sender, used: 0 })
    }

    pub async fn get(&mut self, target: &Target, close: bool, timeout: Duration) -> Result<Answer, Failure> {
        if self.sender.ready().await.is_err() {
            return Err(Failure::Closed);
        }
        let mut request = http::Request::get(&target.path).header(http::header::HOST, &target.authority);
        if close {
            request = request.header(http::header::CONNECTION, "close");
        }
        let request = request.body(Empty::<Bytes>::new()).map_err(|e| Failure::Error(e.to_string()))?;
        let sent = async {
            let response = self.sender.send_request(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>(Answer { status, body })
        };
        match tokio::time::timeout(timeout, sent).await {
            Ok(Ok(answer)) => {
                self.used += 1;
                Ok(answer)
            }
            Ok(Err(e))
                if self.used > 0 && (e.is_incomplete_message() || e.is_canceled() || e.is_closed() || reset(&e)) =>
            {
                Err(Failure::Closed)
            }
            Ok(Err(e)) => Err(Failure::Error(e.to_string())),
            Err(_) => Err(Failure::Error(format!("no answer within {}", super::instance::fmt(timeout)))),
        }
    }
}

/// Whether the peer reset the connection: on a reused keep-alive connection
/// that is a proxy's worker going away (a reload), which browsers answer by
/// sending the GET again, like a close.
fn reset(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
            return matches!(io.kind(), ConnectionReset | ConnectionAborted | BrokenPipe);
        }
        source = s.source();
    }
    false
}

/// One GET on a new connection, closed afterwards.
pub async fn get_once(target: &Target, timeout: Duration) -> Result<Answer, String> {
    let mut conn = Connection::open(target, timeout).await?;
    conn.get(target, true, timeout).await.map_err(|f| match f {
        Failure::Closed => "the connection closed before an answer".to_string(),
        Failure::Error(e) => e,
    })
}

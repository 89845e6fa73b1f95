//! Outgoing HTTP through standard `wasi:http`. The host checks every request
//! against the step's `allow-net` grants.

use std::time::Duration;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme};

/// A response: status, headers and the whole body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request to build and [`send`](Request::send).
#[derive(Debug)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeout: Option<Duration>,
}

pub fn get(url: &str) -> Request {
    Request::new("GET", url)
}

pub fn post(url: &str) -> Request {
    Request::new("POST", url)
}

impl Request {
    pub fn new(method: &str, url: &str) -> Request {
        Request { method: method.into(), url: url.into(), headers: Vec::new(), body: Vec::new(), timeout: None }
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// Bounds connecting and waiting for the first byte.
    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = Some(timeout);
        self
    }

    pub fn send(self) -> Result<Response, String> {
        let url = Url::parse(&self.url)?;
        let headers = Fields::new();
        // A known length, not chunked encoding: many webhooks insist on it.
        if !self.body.is_empty() && !self.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
            let length = self.body.len().to_string();
            headers
                .append("content-length", length.as_bytes())
                .map_err(|e| format!("content-length: {}", words(&e)))?;
        }
        for (k, v) in &self.headers {
            headers.append(k, v.as_bytes()).map_err(|e| format!("header `{k}`: {}", words(&e)))?;
        }
        let request = OutgoingRequest::new(headers);
        let method = match self.method.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "HEAD" => Method::Head,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.to_string()),
        };
        let fail = |what: &str| format!("cannot set the request {what}");
        request.set_method(&method).map_err(|()| fail("method"))?;
        request.set_scheme(Some(&if url.https { Scheme::Https } else { Scheme::Http })).map_err(|()| fail("scheme"))?;
        request.set_authority(Some(&url.authority)).map_err(|()| fail("authority"))?;
        request.set_path_with_query(Some(&url.path)).map_err(|()| fail("path"))?;
        let body = request.body().map_err(|()| "cannot open the request body".to_string())?;
        {
            let stream = body.write().map_err(|()| "cannot write the request body".to_string())?;
            for chunk in self.body.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| format!("writing the request body: {}", words(&e)))?;
            }
        }
        OutgoingBody::finish(body, None).map_err(|e| format!("finishing the request body: {}", words(&e)))?;
        let options = RequestOptions::new();
        if let Some(t) = self.timeout {
            let nanos = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
            let _ = options.set_connect_timeout(Some(nanos));
            let _ = options.set_first_byte_timeout(Some(nanos));
            let _ = options.set_between_bytes_timeout(Some(nanos));
        }
        let pending = outgoing_handler::handle(request, Some(options))
            .map_err(|e| format!("{} {}: {}", self.method, self.url, words(&e)))?;
        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(r))) => r,
            Some(Ok(Err(e))) => return Err(format!("{} {}: {}", self.method, self.url, words(&e))),
            Some(Err(())) | None => return Err(format!("{} {}: no response", self.method, self.url)),
        };
        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let incoming = response.consume().map_err(|()| "cannot read the response body".to_string())?;
        let mut body = Vec::new();
        {
            let stream = incoming.stream().map_err(|()| "cannot read the response body".to_string())?;
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => body.extend_from_slice(&chunk),
                    Err(wasip2::io::streams::StreamError::Closed) => break,
                    Err(e) => return Err(format!("reading the response body: {}", words(&e))),
                }
            }
        }
        Ok(Response { status, headers, body })
    }
}

/// A WASI error in words, as people read it in a step's log:
/// `ConnectionRefused` becomes `connection refused`, a payload follows as is.
pub fn words(e: &impl std::fmt::Debug) -> String {
    let debug = format!("{e:?}");
    let (name, rest) = debug.split_at(debug.find(['(', ' ', '{']).unwrap_or(debug.len()));
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.extend(c.to_lowercase());
    }
    let rest = rest.trim();
    if !rest.is_empty() {
        out.push(' ');
        out.push_str(rest);
    }
    out
}

/// An outgoing request's target, read by the `http` crate's URI parser
/// (IPv6 hosts, ports, queries): `http[s]://host[:port][/path?query]`.
struct Url {
    https: bool,
    authority: String,
    path: String,
}

impl Url {
    fn parse(url: &str) -> Result<Url, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("`{url}` is not an http:// or https:// URL")),
        };
        let authority = uri.authority().map(|a| a.as_str()).filter(|a| !a.is_empty());
        let authority = authority.ok_or_else(|| format!("`{url}` has no host"))?;
        if authority.contains('@') {
            return Err(format!("`{url}`: credentials in URLs are not supported; send a header instead"));
        }
        let path = if uri.path().is_empty() { "/" } else { uri.path() };
        let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        Ok(Url { https, authority: authority.to_string(), path: format!("{path}{query}") })
    }
}

#[cfg(test)]
mod tests {
    use super::{Url, words};

    #[test]
    fn urls_with_ipv6_ports_and_queries() {
        let u = Url::parse("http://[::1]:8080/health?deep=1").expect("valid");
        assert_eq!((u.https, u.authority.as_str(), u.path.as_str()), (false, "[::1]:8080", "/health?deep=1"));
        let u = Url::parse("https://hooks.example.com?x=1").expect("valid");
        assert_eq!((u.https, u.authority.as_str(), u.path.as_str()), (true, "hooks.example.com", "/?x=1"));
        assert!(Url::parse("ftp://x/").is_err());
        assert!(Url::parse("http:///path").is_err());
    }

    #[test]
    fn wasi_errors_read_as_words() {
        #[derive(Debug)]
        #[allow(dead_code)]
        enum ErrorCode {
            ConnectionRefused,
            InternalError(Option<String>),
        }
        assert_eq!(words(&ErrorCode::ConnectionRefused), "connection refused");
        assert_eq!(words(&ErrorCode::InternalError(Some("x".into()))), "internal error (Some(\"x\"))");
    }
}

//! A fault-injecting HTTP/1.1 proxy for tests (std::net and threads only). It listens on
//! 127.0.0.1:0 and forwards each request to an upstream server (s3s-fs), one connection per
//! request, recording method, path, query and headers. The Host header is forwarded unchanged,
//! so SigV4 signatures made for the proxy's address still validate upstream.
//!
//! Faults are scripted per request: `proxy.fault("PUT", "partNumber", 2, Fault::Status(503))`
//! makes the next two PUTs whose query contains "partNumber" answer 503 without reaching the
//! server. Use `usize::MAX` times for a persistent fault.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status and an S3 XML error body; the server never sees the request.
    Status(u16),
    /// Read this many bytes of the request body, then close the connection.
    DropRequest(usize),
    /// Read the request, say nothing for this long, then close.
    Stall(Duration),
    /// Read the request, wait this long, then forward it: a slow link.
    Delay(Duration),
    /// Forward the request, but cut the response body off after this many bytes.
    DropResponse(usize),
    /// Answer with this status and an S3 XML error as soon as the headers are in, without
    /// reading the body or sending `100 Continue`, and close: what S3 does to a request it
    /// refuses (bad signature) while a large body is still on its way.
    RejectEarly(u16),
    /// Like `RejectEarly`, for a server that ignores `Expect: 100-continue`: read this many
    /// bytes of the body first.
    RejectAfter(usize, u16),
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    /// The fault applied to this request, if any.
    pub fault: Option<Fault>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Rule {
    method: String,
    query_contains: String,
    remaining: usize,
    fault: Fault,
}

pub struct Proxy {
    addr: SocketAddr,
    rules: Arc<Mutex<Vec<Rule>>>,
    log: Arc<Mutex<Vec<Recorded>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let rules = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, l, s) = (Arc::clone(&rules), Arc::clone(&log), Arc::clone(&stop));
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (r, l) = (Arc::clone(&r), Arc::clone(&l));
                thread::spawn(move || {
                    let _ = handle(conn, upstream, &r, &l);
                });
            }
        });
        Proxy {
            addr,
            rules,
            log,
            stop,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next `times` requests with this method ("" = any) whose query contains
    /// `query_contains` ("" = any) get `fault`. Rules are tried in the order they were added.
    pub fn fault(&self, method: &str, query_contains: &str, times: usize, fault: Fault) {
        self.rules.lock().unwrap().push(Rule {
            method: method.to_string(),
            query_contains: query_contains.to_string(),
            remaining: times,
            fault,
        });
    }

    /// A table of faults, each row as for `fault`: (method, query_contains, times, fault).
    pub fn faults(&self, script: &[(&str, &str, usize, Fault)]) {
        for (method, query_contains, times, fault) in script {
            self.fault(method, query_contains, *times, fault.clone());
        }
    }

    pub fn clear_faults(&self) {
        self.rules.lock().unwrap().clear();
    }

    /// Every request received so far, faulted ones included.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    pub fn clear_requests(&self) {
        self.log.lock().unwrap().clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

fn take_fault(rules: &Mutex<Vec<Rule>>, method: &str, query: &str) -> Option<Fault> {
    let mut rules = rules.lock().unwrap();
    let rule = rules.iter_mut().find(|r| {
        r.remaining > 0
            && (r.method.is_empty() || r.method.eq_ignore_ascii_case(method))
            && query.contains(&r.query_contains)
    })?;
    rule.remaining -= 1;
    Some(rule.fault.clone())
}

/// Reads header lines up to the blank line; `None` at a clean end of stream.
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Vec<String>>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            return Ok(Some(lines));
        }
        lines.push(line);
    }
}

fn split_header(line: &str) -> Option<(String, String)> {
    let (name, value) = line.split_once(':')?;
    Some((name.trim().to_ascii_lowercase(), value.trim().to_string()))
}

fn handle(
    client: TcpStream,
    upstream: SocketAddr,
    rules: &Mutex<Vec<Rule>>,
    log: &Mutex<Vec<Recorded>>,
) -> io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    let Some(head) = read_head(&mut reader)? else {
        return Ok(());
    };
    let request_line = head.first().cloned().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.clone(), String::new()),
    };
    let headers: Vec<(String, String)> = head[1..].iter().filter_map(|l| split_header(l)).collect();
    let content_length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let fault = take_fault(rules, &method, &query);
    log.lock().unwrap().push(Recorded {
        method: method.clone(),
        path,
        query,
        headers: headers.clone(),
        body_len: content_length,
        fault: fault.clone(),
    });
    if let Some(Fault::RejectEarly(status) | Fault::RejectAfter(_, status)) = fault {
        if let Some(Fault::RejectAfter(n, _)) = fault {
            let mut partial = vec![0; n.min(content_length)];
            reader.read_exact(&mut partial)?;
        }
        reply_status(&mut client, status, &method)?;
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    // Like AWS and s3s-fs, say "go on" to a client that waits for it before sending its body.
    let expects_continue = headers
        .iter()
        .any(|(n, v)| n == "expect" && v.eq_ignore_ascii_case("100-continue"));
    if expects_continue && content_length > 0 {
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    if chunked {
        // Never expected from our client (tests assert it); refuse rather than relay.
        write!(
            client,
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return Ok(());
    }

    if let Some(Fault::DropRequest(n)) = fault {
        let mut partial = vec![0; n.min(content_length)];
        let _ = reader.read_exact(&mut partial);
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body)?;

    match fault {
        Some(Fault::Status(status)) => {
            reply_status(&mut client, status, &method)?;
            return Ok(());
        }
        Some(Fault::Stall(duration)) => {
            thread::sleep(duration);
            let _ = client.shutdown(Shutdown::Both);
            return Ok(());
        }
        Some(Fault::Delay(duration)) => thread::sleep(duration),
        _ => {}
    }

    // Forward, one upstream connection per request.
    let mut up = TcpStream::connect(upstream)?;
    let mut out = String::new();
    out.push_str(&request_line);
    out.push_str("\r\n");
    for line in &head[1..] {
        // The body is already here: upstream need not say "100 Continue".
        if split_header(line).is_some_and(|(n, _)| n == "connection" || n == "expect") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    up.write_all(out.as_bytes())?;
    up.write_all(&body)?;
    up.flush()?;

    let mut up_reader = BufReader::new(up);
    let Some(response_head) = read_head(&mut up_reader)? else {
        return Ok(());
    };
    let mut out = String::new();
    for line in &response_head {
        if split_header(line).is_some_and(|(n, _)| n == "connection") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    client.write_all(out.as_bytes())?;
    match fault {
        Some(Fault::DropResponse(n)) => {
            io::copy(&mut (&mut up_reader).take(n as u64), &mut client)?;
            client.flush()?;
            let _ = client.shutdown(Shutdown::Both);
        }
        _ => {
            io::copy(&mut up_reader, &mut client)?;
            client.flush()?;
            let _ = client.shutdown(Shutdown::Write);
        }
    }
    Ok(())
}

/// An S3 XML error with `status` (a code S3 would give it), and close.
fn reply_status(client: &mut TcpStream, status: u16, method: &str) -> io::Result<()> {
    let code = match status {
        503 | 429 => "SlowDown",
        500 => "InternalError",
        403 => "AccessDenied",
        _ => "InjectedFault",
    };
    let xml = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected</Message></Error>");
    let payload = if method == "HEAD" { "" } else { xml.as_str() };
    write!(
        client,
        "HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    )
}

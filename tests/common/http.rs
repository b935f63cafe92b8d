//! The one loopback HTTP/1.1 server of the tests: it records each request (method, target,
//! headers, body) and answers the n-th connection with the n-th of its replies (the last one
//! repeats). Replies cover what the tests need of a monitor (a status, a body, a redirect, a
//! stall) and of a proxy (a CONNECT tunnel to a local port). A non-2xx status without a body
//! of its own echoes the request line, so a test can check that a monitor's reply quoting the
//! secret URL is not passed on to the user.
//!
//! The integration tests reach it as `common::http`; src/notify.rs's unit tests include this
//! same file with `#[path]`, so there is one request reader.
#![allow(dead_code)] // each user needs a different subset

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query (or a CONNECT's host:port), as sent.
    pub target: String,
    /// Names lowercased, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as `application/x-www-form-urlencoded` pairs.
    pub fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.body.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }
}

/// How the server answers one connection.
#[derive(Debug, Clone)]
pub enum Reply {
    /// This status; the body is "OK" for 2xx, else "cannot handle <request line>".
    Status(u16),
    /// This status and body.
    Body(u16, &'static str),
    /// 302 to this location (clients follow it with a GET).
    Redirect(String),
    /// Read the request, then say nothing for this long.
    Stall(Duration),
    /// A CONNECT proxy: "200 Connection established", then bytes both ways to this port on
    /// 127.0.0.1, whatever host the client asked for.
    Tunnel(u16),
}

pub struct HttpServer {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl HttpServer {
    /// Answers every request with `status`.
    pub fn start(status: u16) -> HttpServer {
        HttpServer::replying(&[Reply::Status(status)])
    }

    /// Answers every request with a 302 redirect to `location`.
    pub fn redirecting(location: String) -> HttpServer {
        HttpServer::replying(&[Reply::Redirect(location)])
    }

    /// Answers the n-th connection with `replies[n]`, the last one repeating.
    pub fn replying(replies: &[Reply]) -> HttpServer {
        assert!(!replies.is_empty(), "no replies");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind HTTP listener");
        let port = listener.local_addr().expect("listener address").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&requests);
        let replies = replies.to_vec();
        // Detached, like each connection's thread: they die with the test process.
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                let reply = replies[n.min(replies.len() - 1)].clone();
                let recorded = Arc::clone(&recorded);
                std::thread::spawn(move || serve(stream, reply, &recorded));
            }
        });
        HttpServer { port, requests }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port><path>`
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("requests lock").clone()
    }

    /// The one request received so far.
    #[track_caller]
    pub fn only_request(&self) -> Request {
        let requests = self.requests();
        assert_eq!(requests.len(), 1, "{requests:#?}");
        requests[0].clone()
    }
}

fn serve(stream: TcpStream, reply: Reply, recorded: &Mutex<Vec<Request>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let request = read_request(&mut reader);
    let echo = request
        .as_ref()
        .map(|r| format!("{} {}", r.method, r.target))
        .unwrap_or_default();
    if let Some(request) = request {
        recorded.lock().expect("requests lock").push(request);
    }
    match reply {
        Reply::Status(status) => {
            let body = if (200..300).contains(&status) {
                "OK".to_string()
            } else {
                format!("cannot handle {echo}")
            };
            respond(stream, status, "", &body);
        }
        Reply::Body(status, body) => respond(stream, status, "", body),
        Reply::Redirect(location) => {
            let body = format!("cannot handle {echo}");
            respond(stream, 302, &format!("Location: {location}\r\n"), &body)
        }
        Reply::Stall(time) => std::thread::sleep(time),
        Reply::Tunnel(port) => tunnel(stream, reader, port),
    }
}

/// Reads one request: the request line, headers, and a body by Content-Length or chunked.
pub fn read_request(reader: &mut impl BufRead) -> Option<Request> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let body = if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; size.checked_add(2)?]; // data and CRLF
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(chunk.get(..size)?);
        }
        body
    } else {
        let length: usize = get("content-length").map_or(0, |v| v.parse().unwrap_or(0));
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        body
    };
    Some(Request {
        method,
        target,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn respond(mut stream: TcpStream, status: u16, extra_headers: &str, body: &str) {
    // 204 and 304 carry no body.
    let _ = if status == 204 || status == 304 {
        write!(
            stream,
            "HTTP/1.1 {status} Whatever\r\n{extra_headers}Connection: close\r\n\r\n"
        )
    } else {
        write!(
            stream,
            "HTTP/1.1 {status} Whatever\r\n{extra_headers}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let _ = stream.flush();
}

fn tunnel(mut client: TcpStream, reader: BufReader<TcpStream>, port: u16) {
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let _ = client.set_read_timeout(None);
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .is_err()
    {
        return;
    }
    // Whatever the client sent after the head is already in the reader's buffer.
    if server.write_all(reader.buffer()).is_err() {
        return;
    }
    let (Ok(mut from_client), Ok(mut to_server)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_client, &mut to_server);
        let _ = to_server.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut server, &mut client);
    let _ = client.shutdown(Shutdown::Write);
    let _ = up.join();
}

//! A minimal HTTP/1.1 client over std's TcpStream (one request per connection), and the
//! `rr serve` child process the tests talk to.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// `rr serve` on 127.0.0.1 at a port the OS picked; killed when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
    /// Everything the server wrote on stderr, collected by a thread.
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    pub fn start(model: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rr"))
            .args(["serve", "--model", model.to_str().unwrap(), "--port", "0"])
            .args(["--device", "cpu"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rr serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut port = None;
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        for line in lines.by_ref() {
            let line = line.unwrap();
            stderr.lock().unwrap().push_str(&line);
            stderr.lock().unwrap().push('\n');
            if let Some(address) = line.split("http://").nth(1) {
                port = Some(address.rsplit(':').next().unwrap().trim().parse().unwrap());
                break;
            }
        }
        let Some(port) = port else {
            let _ = child.kill();
            panic!("rr serve did not start: {}", stderr.lock().unwrap());
        };
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
            }
        });
        Self {
            child,
            port,
            stderr,
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to rr serve");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    stream
}

fn send(stream: &mut TcpStream, method: &str, path: &str, body: Option<&str>) {
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(body) = body {
        request += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    request += "\r\n";
    request += body.unwrap_or("");
    stream.write_all(request.as_bytes()).unwrap();
}

/// Joins the chunks of a `Transfer-Encoding: chunked` body.
fn dechunk(mut raw: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, rest)) = raw.split_once("\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        raw = &rest[n + 2..];
    }
}

fn parse(raw: &str) -> Reply {
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let chunked = head.to_lowercase().contains("transfer-encoding: chunked");
    Reply {
        status,
        headers: head.to_string(),
        body: if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    }
}

pub fn request(port: u16, method: &str, path: &str, body: Option<&str>) -> Reply {
    let mut stream = connect(port);
    send(&mut stream, method, path, body);
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    parse(&raw)
}

pub fn get(port: u16, path: &str) -> Reply {
    request(port, "GET", path, None)
}

pub fn post(port: u16, path: &str, body: &str) -> Reply {
    request(port, "POST", path, Some(body))
}

/// Starts a POST and returns the open connection after the response head has arrived.
pub fn post_open(port: u16, path: &str, body: &str) -> BufReader<TcpStream> {
    let mut stream = connect(port);
    send(&mut stream, "POST", path, Some(body));
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            return reader;
        }
    }
}

/// Sends a POST and keeps the connection open, unread, until the caller drops it.
pub fn post_unread(port: u16, path: &str, body: &str) -> TcpStream {
    let mut stream = connect(port);
    send(&mut stream, "POST", path, Some(body));
    stream
}

/// The `data:` payloads of a server-sent-events body, in order.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE data event: {e:?}"))
                .to_string()
        })
        .collect()
}

pub fn prompt_tokens(answer: &Value) -> f64 {
    answer["usage"]["prompt_tokens"].as_f64().unwrap()
}

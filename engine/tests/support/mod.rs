//! Shared helpers for the end-to-end tests: run the real `courier` binary, stand-in
//! receivers, and a deliberately independent blocking MLLP client (a second opinion on our
//! own codec).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// An example message's bytes.
pub fn example(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("examples/messages").join(name)).unwrap()
}

/// A `courier` child process whose output lines are collected (and echoed for debugging).
/// The admin token every engine a test starts gets from its environment.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// One HTTP/1.1 request over a fresh connection (`Connection: close`); the status and body.
/// Written here rather than with a client crate so a test can also send what no well-behaved
/// client would (a body that never comes).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    read_response(stream)
}

/// Reads one HTTP response: status and body (chunked bodies are joined). Reads as far as
/// the response says (Content-Length, the last chunk, or the end of the connection), so a
/// server that keeps the connection open does not stall the caller.
pub fn read_response(mut stream: TcpStream) -> (u16, String) {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    let complete = |raw: &[u8]| -> bool {
        let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&raw[..at]).to_ascii_lowercase();
        let body = &raw[at + 4..];
        if let Some(n) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            return body.len() >= n;
        }
        head.contains("transfer-encoding: chunked") && body.ends_with(b"0\r\n\r\n")
    };
    while !complete(&raw) {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {head:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&after[..n.min(after.len())]);
            rest = after.get(n + 2..).unwrap_or("");
        }
        out
    } else {
        body.to_owned()
    };
    (status, body)
}

pub struct Proc {
    child: Child,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    name: String,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_courier"))
            .args(args)
            .env("COURIER_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn courier");
        let stdout = collect(child.stdout.take().unwrap(), format!("{name}:out"));
        let stderr = collect(child.stderr.take().unwrap(), format!("{name}:err"));
        Proc {
            child,
            stdout,
            stderr,
            name: name.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a line on stdout or stderr for which `f` returns Some.
    pub fn wait_line<T>(&self, timeout: Duration, f: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            for lines in [&self.stdout, &self.stderr] {
                if let Some(v) = lines.lock().unwrap().iter().find_map(|l| f(l)) {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{}: no matching output line within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// All stderr lines so far, joined.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Sends a signal by name (TERM, KILL, INT).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{}: did not exit in {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(stream: impl Read + Send + 'static, tag: String) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            eprintln!("[{tag}] {line}");
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// A `courier listen` stand-in writing each message to `out`.
pub fn standin(name: &str, out: &Path, port: u16, extra: &[&str]) -> (Proc, SocketAddr) {
    let port = port.to_string();
    let mut args = vec!["listen", "--port", &port, "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let p = Proc::spawn(name, &args);
    let addr = p.wait_line(Duration::from_secs(20), |l| {
        l.strip_prefix("listening on ").map(|a| a.parse().unwrap())
    });
    (p, addr)
}

/// Starts `courier run` on a config text (JSON logs) and returns the address of `listener`.
pub fn start_engine(dir: &Path, config: &str, listener: &str) -> (Proc, SocketAddr) {
    let path = dir.join("courier.toml");
    std::fs::write(&path, config).unwrap();
    let p = Proc::spawn(
        "engine",
        &["--log-format", "json", "run", path.to_str().unwrap()],
    );
    let want = listener.to_owned();
    // Start-up compiles the route steps: allow for a slow, shared machine.
    let addr = p.wait_line(Duration::from_secs(120), move |l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["message"] == "listening" && v["listener"] == want.as_str())
            .then(|| v["addr"].as_str().unwrap().parse().unwrap())
    });
    (p, addr)
}

/// A free loopback port (bound and released; good enough for a test that then binds it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `dir` holds `n` `.hl7` files and returns their contents in name order.
pub fn wait_files(dir: &Path, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "hl7"))
                    .collect()
            })
            .unwrap_or_default();
        if names.len() >= n {
            names.sort();
            return names.iter().map(|p| std::fs::read(p).unwrap()).collect();
        }
        assert!(
            Instant::now() < deadline,
            "{}: {} of {n} files after {timeout:?}",
            dir.display(),
            names.len()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A blocking MLLP connection written independently of the engine's codec.
pub struct Mllp {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Mllp {
    pub fn connect(addr: SocketAddr) -> Mllp {
        let stream = TcpStream::connect(addr).unwrap();
        Mllp {
            stream,
            buf: Vec::new(),
        }
    }

    /// The receiving end of a connection a test server accepted.
    pub fn from_stream(stream: TcpStream) -> Mllp {
        Mllp {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, payload: &[u8]) {
        let mut frame = vec![0x0b];
        frame.extend_from_slice(payload);
        frame.extend_from_slice(&[0x1c, 0x0d]);
        self.stream.write_all(&frame).unwrap();
    }

    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads one reply frame; None on timeout or close.
    pub fn recv(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(start) = self.buf.iter().position(|&b| b == 0x0b)
                && let Some(end) = self.buf[start..].windows(2).position(|w| w == [0x1c, 0x0d])
            {
                let frame = self.buf[start + 1..start + end].to_vec();
                self.buf.drain(..start + end + 2);
                return Some(frame);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    pub fn request(&mut self, payload: &[u8]) -> Vec<u8> {
        self.send(payload);
        self.recv(Duration::from_secs(20)).expect("an ACK")
    }
}

/// Field `n` (1-based, HL7 numbering) of the first segment `seg` of an ER7 reply, split
/// naively (test messages use the default delimiters).
pub fn field(msg: &[u8], seg: &str, n: usize) -> String {
    let text = String::from_utf8_lossy(msg);
    let line = text
        .split('\r')
        .find(|l| l.starts_with(seg))
        .unwrap_or_else(|| panic!("no {seg} in {text:?}"));
    let idx = if seg == "MSH" { n - 1 } else { n };
    line.split('|').nth(idx).unwrap_or("").to_owned()
}

/// A message with the given control id (an ADT^A04 unless changed by the caller).
pub fn adt(control_id: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|REGADT|RIVERSIDE_FD|COURIER|RIVERSIDE|20261124083012||ADT^A04^ADT_A01|{control_id}|P|2.5.1\r\
         PID|1||100234^^^RIVERSIDE^MR||Johnson^Sarah\r"
    )
    .into_bytes()
}

/// Builds `plugins/` for wasm32-wasip2 once per test process (cargo's own lock serialises
/// test binaries doing the same), where examples/clinic.toml expects them.
pub fn build_plugins() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // A fresh machine may lack the target (RUSTUP_AUTO_INSTALL=0 installs nothing by
        // itself); add it when rustup is there, else the build below says what is missing.
        let _ = Command::new("rustup")
            .args(["target", "add", "wasm32-wasip2"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(repo().join("plugins/Cargo.toml"))
            .arg("--target-dir")
            .arg(repo().join("target/wasm-plugins"))
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "building plugins/ for wasm32-wasip2 failed"
        );
    });
}

/// examples/clinic.toml with its listener on a free port, its destinations at `dests`
/// (emr, lis, billing, research; the portal webhook on a closed port) and its plugin and script paths made absolute, so it runs
/// from a temporary directory.
pub fn clinic_config(dests: [SocketAddr; 4]) -> String {
    let examples = repo().join("examples");
    std::fs::read_to_string(examples.join("clinic.toml"))
        .unwrap()
        .replace("127.0.0.1:2575", "127.0.0.1:0")
        .replace("127.0.0.1:8575", "127.0.0.1:0")
        .replace("127.0.0.1:2576", &dests[0].to_string())
        .replace("127.0.0.1:2577", &dests[1].to_string())
        .replace("127.0.0.1:2578", &dests[2].to_string())
        .replace("127.0.0.1:2579", &dests[3].to_string())
        // The portal webhook: a closed port unless the test replaces it first (never the
        // real 2580, where examples/clinic.sh may be running its own stand-in).
        .replace("127.0.0.1:2580", &format!("127.0.0.1:{}", free_port()))
        .replace(
            "\"../target/",
            &format!("\"{}/../target/", examples.display()),
        )
        .replace("\"scripts/", &format!("\"{}/scripts/", examples.display()))
}

/// Polls `f` until it holds, failing the test after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The admin server's address, from the engine's JSON log.
pub fn admin_addr(engine: &Proc) -> SocketAddr {
    engine.wait_line(Duration::from_secs(60), |l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["message"] == "admin server listening").then(|| v["addr"].as_str()?.parse().ok())?
    })
}

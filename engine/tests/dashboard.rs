//! The dashboard in a real browser: headless Chromium (Debian's `chromium`, driven through
//! `chromedriver`; `.ci/run` installs both) loads the page the engine serves, signs in with
//! the token, sees the clinic's routes and a message sent during the test, opens it, clicks
//! resend and sees the new delivery.
//!
//! The WebDriver calls are plain JSON over HTTP (the W3C protocol's handful of endpoints used
//! here), made with the same small HTTP helper as the API tests rather than a WebDriver crate,
//! which would bring an HTTP client stack with TLS into the build for six requests.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The key under which WebDriver returns an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Chromium and ChromeDriver, installed the way `.ci/run` does if this machine lacks them.
fn ensure_chromium() {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let sudo = if root { vec![] } else { vec!["sudo"] };
    for args in [
        vec!["apt-get", "update", "-qq"],
        vec![
            "apt-get",
            "install",
            "-y",
            "-qq",
            "chromium",
            "chromium-driver",
        ],
    ] {
        let cmd: Vec<&str> = sudo.iter().copied().chain(args).collect();
        let status = Command::new(cmd[0])
            .args(&cmd[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "the dashboard test needs Debian's chromium and chromium-driver; `{}` failed (run .ci/run, which installs them)",
            cmd.join(" ")
        );
    }
}

struct Driver {
    process: Child,
    addr: SocketAddr,
    session: String,
}

impl Driver {
    fn start(profile: &Path) -> Driver {
        ensure_chromium();
        let port = free_port();
        let process = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(addr).is_ok() {
                let (status, body) = http(addr, "GET", "/status", None, b"");
                if status == 200 && body.contains("\"ready\":true") {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    // Headless, and nothing that reaches out to the (closed) network.
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        "--disable-dev-shm-usage", "--window-size=1280,1600",
                        format!("--user-data-dir={}", profile.display()),
                    ],
                },
            }},
        });
        let mut driver = Driver {
            process,
            addr,
            session: String::new(),
        };
        let v = driver.call("POST", "/session", caps);
        driver.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_owned();
        driver
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let body = if method == "GET" || method == "DELETE" {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let (status, text) = http(self.addr, method, path, None, &body);
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: {status} {e}: {text}"));
        assert_eq!(status, 200, "{method} {path}: {v}");
        v["value"].clone()
    }

    fn session(&self, method: &str, path: &str, body: Value) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn goto(&self, url: &str) {
        self.session("POST", "/url", json!({ "url": url }));
    }

    /// The element for a CSS selector, waiting up to 20 s for it to appear.
    fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let path = format!("/session/{}/element", self.session);
            let body = json!({ "using": "css selector", "value": css }).to_string();
            let (status, text) = http(self.addr, "POST", &path, None, body.as_bytes());
            if status == 200 {
                let v: Value = serde_json::from_str(&text).unwrap();
                if let Some(e) = v["value"][ELEMENT].as_str() {
                    return e.to_owned();
                }
                panic!("find `{css}`: {text}");
            }
            assert!(Instant::now() < deadline, "no element `{css}`: {text}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Finds `css` and runs `action` on the element (`/element/ID` + `action`), finding it
    /// again when the page replaced it in between (the dashboard redraws its lists as they
    /// refresh): WebDriver then answers "stale element reference".
    fn on_element(&self, css: &str, method: &str, action: &str, body: Value) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let e = self.find(css);
            let path = format!("/session/{}/element/{e}{action}", self.session);
            let sent = if method == "GET" {
                Vec::new()
            } else {
                body.to_string().into_bytes()
            };
            let (status, text) = http(self.addr, method, &path, None, &sent);
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: {status} {e}: {text}"));
            if status == 200 {
                return v["value"].clone();
            }
            let stale = v["value"]["error"] == "stale element reference";
            assert!(
                stale && Instant::now() < deadline,
                "{method} {path}: {status} {v}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn text(&self, css: &str) -> String {
        self.on_element(css, "GET", "/text", Value::Null)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until the text of `css` satisfies `f`.
    fn wait_text(&self, css: &str, what: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let t = self.text(css);
            if f(&t) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "`{css}` never showed {what}: {t:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn click(&self, css: &str) {
        self.on_element(css, "POST", "/click", json!({}));
    }

    fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, "POST", "/value", json!({ "text": text }));
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = std::panic::catch_unwind(|| http(self.addr, "DELETE", &path, None, b""));
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[test]
fn the_dashboard_signs_in_shows_the_clinic_and_resends_a_message() {
    build_plugins();
    let tmp = tempfile::tempdir().unwrap();
    let outs: Vec<_> = ["emr", "lis", "billing", "research"]
        .iter()
        .map(|s| {
            let d = tmp.path().join(s);
            std::fs::create_dir_all(&d).unwrap();
            d
        })
        .collect();
    let stands: Vec<_> = outs
        .iter()
        .zip(["emr", "lis", "billing", "research"])
        .map(|(d, n)| standin(n, d, 0, &[]))
        .collect();
    let addrs = [stands[0].1, stands[1].1, stands[2].1, stands[3].1];
    let (engine, addr) = start_engine(tmp.path(), &clinic_config(addrs), "clinic");
    let admin = admin_addr(&engine);

    // Sarah's registration goes to the EMR (and billing, and research).
    let mut c = Mllp::connect(addr);
    let ack = c.request(&example("adt_a04_sarah.hl7"));
    assert_eq!(field(&ack, "MSA", 1), "AA");
    let control_id = field(&example("adt_a04_sarah.hl7"), "MSH", 10);
    wait_files(&outs[0], 1, Duration::from_secs(30));

    let browser = Driver::start(&tmp.path().join("chromium-profile"));
    browser.goto(&format!("http://{admin}/"));
    browser.type_into("#token", ADMIN_TOKEN);
    browser.click("#signin-button");

    // The clinic's routes and destinations.
    let routes = browser.wait_text("#routes tbody", "the clinic's routes", |t| {
        t.contains("registration-to-emr")
    });
    for route in ["orders-to-lab", "results-to-chart", "research-feed"] {
        assert!(routes.contains(route), "{route} missing: {routes}");
    }
    browser.wait_text("#destinations tbody", "the EMR", |t| t.contains("emr"));

    // The message sent above, found by its control id, shown field by field.
    browser.type_into("#search input[name=control_id]", &control_id);
    browser.click("#search button[type=submit]");
    browser.wait_text("#messages tbody", "the message", |t| {
        t.contains(&control_id)
    });
    browser.click("#messages a[data-id]");
    browser.wait_text("#message-title", "the message's title", |t| {
        t.contains(&control_id)
    });
    let segments = browser.text("#segments");
    assert!(segments.contains("Message Control ID"), "{segments}");
    assert!(segments.contains("Patient Name"), "{segments}");
    let deliveries = browser.text("#deliveries tbody");
    assert_eq!(deliveries.lines().count(), 3, "{deliveries}");

    // Resend: a new delivery per destination appears, and reaches the EMR again.
    browser.click("#resend");
    browser.wait_text("#resend-result", "the resend's answer", |t| {
        t.contains("Queued 3 new deliveries")
    });
    let after = browser.wait_text("#deliveries tbody", "the new deliveries", |t| {
        t.matches("(resend)").count() == 3
    });
    assert_eq!(after.lines().count(), 6, "{after}");
    wait_files(&outs[0], 2, Duration::from_secs(30));
}

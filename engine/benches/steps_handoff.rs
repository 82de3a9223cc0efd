//! What a route's steps cost when they run right after their thread was woken, as the engine
//! runs them (a message is handed from the async worker that read it to a blocking-pool
//! thread), beside the same steps called again and again on one thread, as a criterion loop
//! calls them.
//!
//! The route is `bench/e2e.sh`'s one-route pipeline: the lab-codes WASM step and the PV1
//! location Rhai script, with the example clinic's tables, on the example clinic's messages
//! (`examples/messages/`, in turn). Each variant of the route runs two ways:
//!
//! - *loop*: the steps on this thread, message after message;
//! - *handed*: each message sent to one other thread over a channel, its steps run there, and
//!   the answer awaited before the next is sent: the thread sleeps between messages. The
//!   route without steps gives what the hand-off alone costs.
//!
//! It prints microseconds per message: wall time, and the process's CPU time (user + system,
//! from `/proc/self/stat`). On the 2-core VM of docs/performance.md (2026-12-04, night) the
//! hand-off alone cost 28.5 us of CPU per message, and the steps after it 1.3 to 2 times
//! their CPU in the loop.
//!
//! `cargo bench -p courier --bench steps_handoff` (plugins are built first, as the tests do).

use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::Instant;

use courier::config::Config;
use courier::hl7::{Message, ParseOptions};
use courier::steps::{Steps, run_route};

#[path = "../tests/support/mod.rs"]
mod support;
use support::{example, repo};

const MESSAGES: usize = 20_000;

/// The one-route pipeline's route with `steps` of "wasm" and "rhai", and the example clinic's
/// lookup tables.
fn config(plugins: &Path, steps: &[&str]) -> Config {
    let clinic = std::fs::read_to_string(repo().join("examples/clinic.toml")).expect("clinic");
    let tables: String = clinic
        .lines()
        .skip_while(|l| !l.starts_with("[tables."))
        .take_while(|l| !l.starts_with("[[route]]"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut text = String::from(
        "[[listener]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\n\n\
         [[destination]]\nname = \"chart\"\naddress = \"127.0.0.1:9\"\n\n\
         [[route]]\nname = \"all-to-chart\"\ndestinations = [\"chart\"]\n",
    );
    for step in steps {
        match *step {
            "wasm" => text.push_str(&format!(
                "  [[route.step]]\n  wasm = {:?}\n  settings = {{ table = \"loinc\", direction = \"to_loinc\" }}\n",
                plugins.join("lab_codes.wasm")
            )),
            "rhai" => text.push_str(&format!(
                "  [[route.step]]\n  script = {:?}\n",
                repo().join("examples/scripts/pv1_location.rhai")
            )),
            other => panic!("no step {other}"),
        }
    }
    text.push('\n');
    text.push_str(&tables);
    Config::parse(&text, Path::new("steps_handoff.toml")).expect("the bench's config")
}

fn examples() -> Vec<Message> {
    [
        "adt_a04_sarah.hl7",
        "orm_o01_labs.hl7",
        "oru_r01_results.hl7",
    ]
    .iter()
    .map(|name| Message::parse_with(example(name), &ParseOptions::lenient()).expect("parses"))
    .collect()
}

/// The route's steps on one message, as the engine runs them.
fn run(steps: &Steps, msg: &Message) {
    let (route, control_id): (Arc<str>, Arc<str>) = ("all-to-chart".into(), "BENCH".into());
    let mut records = Vec::new();
    let result = run_route(steps, 0, &route, &control_id, msg, &mut records);
    std::hint::black_box((result, records));
}

/// The process's CPU seconds so far (user + system).
fn cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command name, which is in parentheses: utime and stime are the
    // 12th and 13th of them.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat")
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    // CLK_TCK is 100 on Linux.
    ticks / 100.0
}

/// Wall and CPU microseconds per message of `n` messages.
fn measure(n: usize, mut each: impl FnMut(usize)) -> (f64, f64) {
    let (started, cpu_before) = (Instant::now(), cpu());
    for i in 0..n {
        each(i);
    }
    let per = |s: f64| s * 1e6 / n as f64;
    (
        per(started.elapsed().as_secs_f64()),
        per(cpu() - cpu_before),
    )
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it once, quickly.
    let n = if std::env::args().any(|a| a == "--bench") {
        MESSAGES
    } else {
        300
    };
    support::build_plugins();
    let plugins = repo().join("target/wasm-plugins/wasm32-wasip2/release");
    let messages = Arc::new(examples());
    println!(
        "the one-route steps, {n} messages (the example clinic's three in turn), us per message"
    );
    println!(
        "{:<16} {:>10} {:>10} {:>12} {:>12}",
        "steps", "loop wall", "loop cpu", "handed wall", "handed cpu"
    );
    for steps in [&["wasm", "rhai"][..], &["wasm"], &["rhai"], &[]] {
        let loaded = Arc::new(Steps::load(&config(&plugins, steps), None).expect("steps load"));
        for msg in messages.iter() {
            run(&loaded, msg);
        }
        let looped = measure(n, |i| run(&loaded, &messages[i % messages.len()]));

        let (to_worker, jobs) = mpsc::channel::<usize>();
        let (done, answers) = mpsc::channel::<()>();
        let worker = {
            let (loaded, messages) = (loaded.clone(), messages.clone());
            std::thread::spawn(move || {
                while let Ok(i) = jobs.recv() {
                    run(&loaded, &messages[i % messages.len()]);
                    done.send(()).expect("bench waits");
                }
            })
        };
        let handed = measure(n, |i| {
            to_worker.send(i).expect("worker runs");
            answers.recv().expect("worker answers");
        });
        drop(to_worker);
        worker.join().expect("worker");

        let name = if steps.is_empty() {
            "none".to_owned()
        } else {
            steps.join(" + ")
        };
        println!(
            "{name:<16} {:>10.1} {:>10.1} {:>12.1} {:>12.1}",
            looped.0, looped.1, handed.0, handed.1
        );
    }
}

//! `courier bench`: an MLLP load generator. Sends realistic messages (built in, or a corpus of
//! files) with unique control ids over N connections, optionally several in flight on each,
//! checks every ACK (MSA-1 accepted, MSA-2 the control id sent) and prints throughput, latency
//! percentiles and errors by kind.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use courier::messagefile::read_messages;
use courier_hl7::{LineEndings, Message, ParseOptions, Path as HlPath, ReceivedAck};
use courier_mllp::MllpCodec;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::codec::Framed;

/// Options of `courier bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Receiver, host:port.
    #[arg(long)]
    to: String,
    /// Connections, each its own sender.
    #[arg(long, default_value = "1")]
    connections: usize,
    /// Messages each connection sends ahead of their ACKs (1: wait for each ACK).
    #[arg(long, default_value = "1")]
    in_flight: usize,
    /// Messages in all (default 10,000 unless --duration is given).
    #[arg(long, conflicts_with = "duration")]
    messages: Option<u64>,
    /// Send for this long instead (e.g. `30s`).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Files of messages to send in turn (as `courier send` reads them); each copy gets a
    /// unique MSH-10. Default: a built-in ADT^A04, ORM^O01 and ORU^R01, in turn for one
    /// patient after another (a new PID-3.1 every three messages).
    #[arg(long)]
    corpus: Vec<PathBuf>,
    /// How long to wait for an ACK before counting a timeout (and closing that connection).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print the figures as one JSON object.
    #[arg(long)]
    json: bool,
}

/// A message with holes where MSH-10 and (in the built-in messages) PID-3.1 go.
struct Template {
    /// The bytes around the holes: one more piece than holes.
    pieces: Vec<Bytes>,
    holes: Vec<Hole>,
}

#[derive(Debug, Clone, Copy)]
enum Hole {
    ControlId,
    Patient,
}

const MARK: &str = "COURIERBENCHID";
const PATIENT_MARK: &str = "COURIERBENCHMRN";

impl Template {
    /// `vary_patient`: PID-3.1 becomes a hole too (the built-in messages), so the traffic
    /// spans many patients as a clinic's does; a corpus is sent as it is apart from MSH-10.
    fn of(raw: Bytes, vary_patient: bool) -> anyhow::Result<Template> {
        let options = ParseOptions {
            line_endings: LineEndings::Lenient,
            ..ParseOptions::default()
        };
        let mut msg =
            Message::parse_with(raw, &options).context("a corpus message does not parse")?;
        msg.set(&HlPath::new("MSH").with_field(10), MARK)
            .context("setting MSH-10")?;
        let pid = HlPath::new("PID").with_field(3).with_component(1);
        let vary_patient = vary_patient && msg.get(&pid).is_some();
        if vary_patient {
            msg.set(&pid, PATIENT_MARK).context("setting PID-3.1")?;
        }
        let bytes = msg.encode();
        let mut holes = vec![(
            memchr::memmem::find(&bytes, MARK.as_bytes()).context("MSH-10 not found")?,
            MARK.len(),
            Hole::ControlId,
        )];
        if vary_patient {
            let at = memchr::memmem::find(&bytes, PATIENT_MARK.as_bytes())
                .context("PID-3.1 not found")?;
            holes.push((at, PATIENT_MARK.len(), Hole::Patient));
        }
        holes.sort_by_key(|h| h.0);
        let mut pieces = Vec::with_capacity(holes.len() + 1);
        let mut from = 0;
        for &(at, len, _) in &holes {
            pieces.push(bytes.slice(from..at));
            from = at + len;
        }
        pieces.push(bytes.slice(from..));
        Ok(Template {
            pieces,
            holes: holes.into_iter().map(|h| h.2).collect(),
        })
    }

    fn with(&self, control_id: &str, patient: &str) -> Bytes {
        let len =
            self.pieces.iter().map(Bytes::len).sum::<usize>() + control_id.len() + patient.len();
        let mut b = BytesMut::with_capacity(len);
        for (i, piece) in self.pieces.iter().enumerate() {
            b.extend_from_slice(piece);
            match self.holes.get(i) {
                Some(Hole::ControlId) => b.extend_from_slice(control_id.as_bytes()),
                Some(Hole::Patient) => b.extend_from_slice(patient.as_bytes()),
                None => {}
            }
        }
        b.freeze()
    }
}

/// The built-in messages: a front desk's ADT, the EMR's order and the lab's result, from the
/// senders the example clinic routes on (its ORU routes take results from `RIVERSIDE_LIS`
/// only), so that the clinic under load does what it does with its day's traffic.
fn built_in() -> Vec<Bytes> {
    [
        "MSH|^~\\&|REGADT|RIVERSIDE_FD|COURIER|RIVERSIDE|20261201083012||ADT^A04^ADT_A01|X|P|2.5.1\r\
         EVN|A04|20261201083012\r\
         PID|1||100234^^^RIVERSIDE^MR~999112222^^^USSSA^SS||Johnson^Sarah^Marie||19840312|F|||42 Elm Street^^Springfield^IL^62704^USA||(217)555-0143|||S||ACC100234\r\
         NK1|1|Johnson^Mark|SPO|42 Elm Street^^Springfield^IL^62704^USA|(217)555-0199\r\
         PV1|1|O|CLINIC^101^A^RIVERSIDE||||1234^Patel^Anil^^^DR|||FAM||||1|||1234^Patel^Anil^^^DR|OP|V5531|||||||||||||||||||||||||20261201083000\r\
         IN1|1|BCBS-PPO|BCBSIL|Blue Cross Blue Shield of Illinois\r",
        "MSH|^~\\&|EMR|RIVERSIDE|LIS|RIVERSIDE|20261201091500||ORM^O01^ORM_O01|X|P|2.5.1\r\
         PID|1||100234^^^RIVERSIDE^MR||Johnson^Sarah^Marie||19840312|F\r\
         ORC|NW|ORD7781|||||^^^20261201091500^^R||20261201091500|||1234^Patel^Anil\r\
         OBR|1|ORD7781||CBC^Complete blood count^L|||20261201091500||||||||||1234^Patel^Anil\r\
         OBR|2|ORD7782||LIPID^Lipid panel^L|||20261201091500||||||||||1234^Patel^Anil\r",
        "MSH|^~\\&|RIVERSIDE_LIS|RIVERSIDE_LAB|EMR|RIVERSIDE|20261201143000||ORU^R01^ORU_R01|X|P|2.5.1\r\
         PID|1||100234^^^RIVERSIDE^MR||Johnson^Sarah^Marie||19840312|F\r\
         OBR|1|ORD7781|LAB5521|CBC^Complete blood count^L|||20261201091500|||||||||1234^Patel^Anil||||||20261201142900|||F\r\
         OBX|1|NM|WBC^White blood cells^L||6.2|10*3/uL|4.0-11.0|N|||F\r\
         OBX|2|NM|HGB^Hemoglobin^L||13.8|g/dL|12.0-16.0|N|||F\r\
         OBX|3|NM|PLT^Platelets^L||245|10*3/uL|150-400|N|||F\r\
         OBX|4|NM|HCT^Hematocrit^L||41.2|%|36-46|N|||F\r",
    ]
    .into_iter()
    .map(|s| Bytes::from(s.to_owned()))
    .collect()
}

/// What one connection saw.
#[derive(Default)]
struct Tally {
    accepted: u64,
    latencies_us: Vec<u32>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
    }
}

/// Runs the benchmark and prints the figures; exit 1 if any message was not accepted.
pub fn bench(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    if args.connections == 0 || args.in_flight == 0 {
        bail!("--connections and --in-flight must be at least 1");
    }
    let built_in_messages = args.corpus.is_empty();
    let raw = if built_in_messages {
        built_in()
    } else {
        let mut all = Vec::new();
        for f in &args.corpus {
            all.extend(read_messages(f).with_context(|| format!("reading {}", f.display()))?);
        }
        all
    };
    if raw.is_empty() {
        bail!("the corpus holds no message");
    }
    let templates: Arc<Vec<Template>> = Arc::new(
        raw.into_iter()
            .map(|raw| Template::of(raw, built_in_messages))
            .collect::<anyhow::Result<_>>()?,
    );
    let total = match (args.messages, args.duration) {
        (Some(n), _) => Some(n),
        (None, Some(_)) => None,
        (None, None) => Some(10_000),
    };
    // Unique across runs: a receiver with duplicate detection must not see repeats.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64 % 100_000_000);
    super::runtime()?.block_on(async {
        let next = Arc::new(AtomicU64::new(0));
        let deadline = args.duration.map(|d| Instant::now() + d);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..args.connections {
            let job = Connection {
                to: args.to.clone(),
                id: c,
                run,
                in_flight: args.in_flight,
                timeout: args.timeout,
                templates: templates.clone(),
                next: next.clone(),
                total,
                deadline,
            };
            tasks.push(tokio::spawn(job.run()));
        }
        let mut tally = Tally::default();
        for t in tasks {
            let one = t.await.context("a sender task failed")?;
            tally.accepted += one.accepted;
            tally.latencies_us.extend(one.latencies_us);
            for (k, n) in one.errors {
                *tally.errors.entry(k).or_default() += n;
            }
        }
        let elapsed = started.elapsed();
        report(args, &mut tally, elapsed)
    })
}

struct Connection {
    to: String,
    id: usize,
    run: u64,
    in_flight: usize,
    timeout: Duration,
    templates: Arc<Vec<Template>>,
    next: Arc<AtomicU64>,
    total: Option<u64>,
    deadline: Option<Instant>,
}

impl Connection {
    /// The next message's number, or None when the run is over.
    fn take(&self) -> Option<u64> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        match self.total {
            Some(total) if n >= total => None,
            _ => Some(n),
        }
    }

    async fn run(self) -> Tally {
        let mut tally = Tally::default();
        let stream = match TcpStream::connect(&self.to).await {
            Ok(s) => s,
            Err(e) => {
                tally.error(format!("connect: {}", e.kind()));
                return tally;
            }
        };
        let _ = stream.set_nodelay(true);
        let (mut sink, mut frames) = Framed::new(stream, MllpCodec::new(16 * 1024 * 1024)).split();
        let window = Arc::new(Semaphore::new(self.in_flight));
        let sent: Arc<Mutex<VecDeque<(String, Instant)>>> = Arc::default();
        let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);

        // The reader: ACKs come back in the order the messages went out.
        let reader = {
            let sent = sent.clone();
            let window = window.clone();
            let timeout = self.timeout;
            tokio::spawn(async move {
                let mut tally = Tally::default();
                loop {
                    let waiting = !sent.lock().expect("sent").is_empty();
                    if !waiting && *done_rx.borrow_and_update() {
                        break;
                    }
                    let frame = if waiting {
                        match tokio::time::timeout(timeout, frames.next()).await {
                            Ok(f) => f,
                            Err(_) => {
                                tally.error("timeout");
                                break;
                            }
                        }
                    } else {
                        // Nothing outstanding: an ACK for what the writer sends next, or
                        // the writer saying it is done (checked at the top of the loop).
                        tokio::select! {
                            f = frames.next() => f,
                            _ = done_rx.changed() => continue,
                        }
                    };
                    let Some(frame) = frame else {
                        if !sent.lock().expect("sent").is_empty() {
                            tally.error("connection closed");
                        }
                        break;
                    };
                    let Some((control_id, at)) = sent.lock().expect("sent").pop_front() else {
                        tally.error("ACK for nothing sent");
                        continue;
                    };
                    match frame {
                        Ok(ack) => match ReceivedAck::parse(&ack) {
                            Ok(a) if a.control_id != control_id => tally.error("MSA-2 mismatch"),
                            Ok(a) if a.code.is_accept() => {
                                tally.accepted += 1;
                                tally
                                    .latencies_us
                                    .push(at.elapsed().as_micros().min(u32::MAX as u128) as u32);
                            }
                            Ok(a) => tally.error(a.code.as_str()),
                            Err(_) => tally.error("unreadable ACK"),
                        },
                        Err(e) => {
                            tally.error(format!("framing: {e}"));
                            break;
                        }
                    }
                    window.add_permits(1);
                }
                // Whatever is still outstanding will not be answered.
                let lost = sent.lock().expect("sent").len() as u64;
                if lost > 0 {
                    *tally.errors.entry("not answered".into()).or_default() += lost;
                }
                window.close();
                tally
            })
        };

        // The writer: keeps up to `in_flight` messages outstanding.
        while let Ok(permit) = window.acquire().await {
            permit.forget();
            let Some(n) = self.take() else { break };
            let control_id = format!("B{}-{}-{n}", self.run, self.id);
            let templates = self.templates.len() as u64;
            let template = &self.templates[(n % templates) as usize];
            // Each built-in patient is registered, then has an order and then a result: the
            // sequence repeats for the next patient, as at a clinic's front desk.
            let patient = format!("{}", 100_000 + n / templates);
            let bytes = template.with(&control_id, &patient);
            sent.lock()
                .expect("sent")
                .push_back((control_id, Instant::now()));
            if sink.send(bytes).await.is_err() {
                break;
            }
        }
        let _ = done_tx.send(true);
        let mut theirs = reader.await.unwrap_or_default();
        theirs.errors.extend(std::mem::take(&mut tally.errors));
        theirs
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

fn report(args: &BenchArgs, tally: &mut Tally, elapsed: Duration) -> anyhow::Result<ExitCode> {
    tally.latencies_us.sort_unstable();
    let lat = &tally.latencies_us;
    let errors: u64 = tally.errors.values().sum();
    let rate = tally.accepted as f64 / elapsed.as_secs_f64().max(1e-9);
    let (p50, p99, max) = (
        percentile(lat, 0.50),
        percentile(lat, 0.99),
        percentile(lat, 1.0),
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "to": args.to,
                "connections": args.connections,
                "in_flight": args.in_flight,
                "accepted": tally.accepted,
                "errors": errors,
                "errors_by_kind": tally.errors,
                "seconds": elapsed.as_secs_f64(),
                "messages_per_second": rate,
                "latency_ms": { "p50": p50, "p99": p99, "max": max },
            })
        );
    } else {
        println!(
            "courier bench -> {}: {} connection(s) x {} in flight",
            args.to, args.connections, args.in_flight
        );
        println!(
            "accepted  {} ({} errors) in {:.2} s",
            tally.accepted,
            errors,
            elapsed.as_secs_f64()
        );
        println!("rate      {rate:.0} messages/s");
        println!("latency   p50 {p50:.2} ms  p99 {p99:.2} ms  max {max:.2} ms");
        for (kind, n) in &tally.errors {
            println!("error     {kind}: {n}");
        }
    }
    Ok(if errors == 0 && tally.accepted > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(bytes: Bytes, path: &str) -> Option<String> {
        let msg = Message::parse(bytes).expect("parses");
        let (segment, rest) = path.split_once('-').expect("SEG-n[.n]");
        let (field, component) = match rest.split_once('.') {
            Some((f, c)) => (f.parse().unwrap(), Some(c.parse().unwrap())),
            None => (rest.parse().unwrap(), None),
        };
        let mut p = HlPath::new(segment).with_field(field);
        if let Some(c) = component {
            p = p.with_component(c);
        }
        msg.get(&p)
    }

    #[test]
    fn built_in_messages_get_the_control_id_and_patient_given() {
        for raw in built_in() {
            let t = Template::of(raw.clone(), true).unwrap();
            let out = t.with("B1-0-7", "100042");
            assert_eq!(field(out.clone(), "MSH-10").as_deref(), Some("B1-0-7"));
            assert_eq!(field(out.clone(), "PID-3.1").as_deref(), Some("100042"));
            // Nothing else moves: the other fields are those of the message as written.
            assert_eq!(field(out.clone(), "MSH-9"), field(raw.clone(), "MSH-9"));
            assert_eq!(field(out, "PID-5"), field(raw, "PID-5"));
        }
    }

    #[test]
    fn the_example_clinic_routes_the_built_in_messages_as_its_day_traffic() {
        use courier::config::Config;
        use courier::route::{Envelope, Router};
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/clinic.toml");
        let config = Config::load(&path).expect("the example clinic loads");
        let names: Vec<String> = config
            .destinations
            .iter()
            .map(|d| d.get_ref().name.to_string())
            .collect();
        let router = Router::new(&config, |n| names.iter().position(|d| d == n)).unwrap();
        let routes: Vec<Vec<String>> = built_in()
            .into_iter()
            .map(|raw| {
                let msg = Message::parse(raw).unwrap();
                let env = Envelope::of(&msg);
                router
                    .select("clinic", &env, &msg)
                    .map(|r| r.name.to_string())
                    .collect()
            })
            .collect();
        assert_eq!(
            routes,
            [
                vec![
                    "registration-to-emr",
                    "registration-to-billing",
                    "research-feed"
                ],
                vec!["orders-to-lab"],
                vec!["results-to-chart", "results-to-portal", "research-feed"],
            ]
        );
    }

    #[test]
    fn a_corpus_message_keeps_its_patient() {
        let raw = built_in().remove(1);
        let t = Template::of(raw, false).unwrap();
        let out = t.with("C9", "100042");
        assert_eq!(field(out.clone(), "MSH-10").as_deref(), Some("C9"));
        assert_eq!(field(out, "PID-3.1").as_deref(), Some("100234"));
    }
}

//! TLS, source allow-lists and slowloris resistance over real TCP on 127.0.0.1, with
//! certificates made at test time: the mutual-TLS matrix (no certificate, another CA's,
//! expired, valid), TLS 1.1 and plaintext refused before any frame, certificate reload under
//! an open connection, allow-list refusal, and real senders served through a flood of
//! trickling connections.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::capture::{Line, capture, find};
use common::pki::{Ca, Issued, write};
use common::{Server, bounded, round_trip, settings};
use courier_mllp::{
    ClientSettings, ClientTls, ClientTlsFiles, ListenerSettings, MllpClient, MllpCodec, ServerTls,
    ServerTlsFiles, parse_allow,
};
use futures::{SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;
use tracing::Level;

/// Names the server certificate is valid for.
const SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1"];

/// A CA and a server certificate it signed, written to a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("Courier test CA");
        let server = ca.issue("courier-test-server", SERVER_NAMES);
        let ca_file = write(dir.path(), "ca.pem", &ca.pem);
        let cert_file = write(dir.path(), "server.pem", &server.cert);
        let key_file = write(dir.path(), "server.key", &server.key);
        Pki {
            dir,
            ca,
            ca_file,
            cert_file,
            key_file,
        }
    }

    fn server(&self, mutual: bool) -> ServerTls {
        ServerTls::load(ServerTlsFiles {
            cert: self.cert_file.clone(),
            key: self.key_file.clone(),
            client_ca: mutual.then(|| self.ca_file.clone()),
        })
        .expect("server TLS loads")
    }

    /// Client TLS trusting this CA, offering `cert` (written under `name`) if given.
    fn client(&self, cert: Option<(&str, &Issued)>) -> ClientTls {
        let (cert, key) = match cert {
            None => (None, None),
            Some((name, issued)) => (
                Some(write(self.dir.path(), &format!("{name}.pem"), &issued.cert)),
                Some(write(self.dir.path(), &format!("{name}.key"), &issued.key)),
            ),
        };
        ClientTls::load(ClientTlsFiles {
            ca: self.ca_file.clone(),
            cert,
            key,
            server_name: None,
        })
        .expect("client TLS loads")
    }
}

fn tls_client(addr: SocketAddr, tls: ClientTls) -> MllpClient {
    MllpClient::new(
        addr.to_string(),
        ClientSettings {
            connect_timeout: Duration::from_secs(5),
            tls: Some(tls),
            ..ClientSettings::default()
        },
    )
}

/// Waits (bounded) until a line at `level` holds every needle.
async fn logged(lines: &Mutex<Vec<Line>>, level: Level, needles: &[&str]) {
    let started = Instant::now();
    while !find(lines, level, needles) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no {level} line with {needles:?} in {:#?}",
            lines.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads until the server closes, returning what it sent (bounded).
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match bounded("server to close", stream.read(&mut buf)).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn framed_round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Framed<S, MllpCodec>,
    payload: &str,
) -> String {
    bounded("send", conn.send(payload.as_bytes()))
        .await
        .expect("send");
    let reply = bounded("reply", conn.next())
        .await
        .expect("connection closed before the reply")
        .expect("reply decodes");
    String::from_utf8(reply.to_vec()).expect("utf-8 reply")
}

#[tokio::test]
async fn mutual_tls_admits_only_a_valid_client_certificate_and_says_why_others_fail() {
    let (lines, _guard) = capture();
    let pki = Pki::new();
    let server = Server::start(ListenerSettings {
        tls: Some(pki.server(true)),
        ..settings()
    })
    .await;
    let other_ca = Ca::new("Some other CA");
    let wrong_ca = other_ca.issue("intruder", &["intruder"]);
    let expired = pki.ca.issue_expired("old-lab", &["old-lab"]);
    let valid = pki.ca.issue("lab", &["lab"]);
    let reply_timeout = Duration::from_secs(5);

    let refused: [(Option<(&str, &Issued)>, &str); 3] = [
        (None, "no client certificate presented"),
        (Some(("wrong-ca", &wrong_ca)), "unknown CA"),
        (Some(("expired", &expired)), "certificate expired"),
    ];
    for (cert, why) in refused {
        let mut client = tls_client(server.addr, pki.client(cert));
        let outcome = client.request(b"MSH|refused", reply_timeout).await;
        assert!(outcome.is_err(), "{why}: got a reply {outcome:?}");
        logged(
            &lines,
            Level::WARN,
            &[
                "TLS handshake failed",
                why,
                "listener=test",
                "peer=127.0.0.1:",
            ],
        )
        .await;
    }
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 0);

    let mut client = tls_client(server.addr, pki.client(Some(("lab", &valid))));
    let reply = bounded("request", client.request(b"MSH|valid", reply_timeout))
        .await
        .expect("a valid client certificate gets its reply");
    assert_eq!(&reply[..], b"MSH|valid");
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 1);

    // Hanging up without a TLS close_notify (as MLLP senders do) is a plain close.
    drop(client);
    logged(&lines, Level::DEBUG, &["connection closed"]).await;
    assert!(!find(&lines, Level::WARN, &["closing connection"]));
    server.stop().await;
}

#[tokio::test]
async fn a_client_refuses_a_server_certificate_from_an_unknown_ca() {
    let pki = Pki::new();
    let server = Server::start(ListenerSettings {
        tls: Some(pki.server(false)),
        ..settings()
    })
    .await;
    // Trusts another CA only — one with the same name, so the impostor is caught by its
    // signature rather than by name.
    let stranger = Pki::new();
    let mut client = tls_client(server.addr, stranger.client(None));
    let error = client
        .request(b"MSH|x", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(error, courier_mllp::ClientError::Tls { .. })
            && format!("{error:?}").contains("BadSignature"),
        "{error:?}"
    );
    // And with the right CA, one-way TLS works without a client certificate.
    let mut client = tls_client(server.addr, pki.client(None));
    let reply = client.request(b"MSH|y", Duration::from_secs(5)).await;
    assert_eq!(&reply.expect("reply")[..], b"MSH|y");
    server.stop().await;
}

/// A TLS 1.1 ClientHello: legacy version 0x0302 and no supported_versions extension.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version: TLS 1.1
    body.extend([0x42; 32]); // random
    body.push(0); // no session id
    body.extend([0x00, 0x04, 0xC0, 0x14, 0x00, 0x2F]); // ECDHE-RSA-AES256-SHA, AES128-SHA
    body.extend([0x01, 0x00]); // compression: null only
    let len = u32::try_from(body.len()).unwrap().to_be_bytes();
    let mut handshake = vec![0x01]; // ClientHello
    handshake.extend(&len[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01]; // handshake record, TLS 1.0 record version
    record.extend(u16::try_from(handshake.len()).unwrap().to_be_bytes());
    record.extend(handshake);
    record
}

#[tokio::test]
async fn tls_1_1_is_refused() {
    let (lines, _guard) = capture();
    let pki = Pki::new();
    let server = Server::start(ListenerSettings {
        tls: Some(pki.server(false)),
        ..settings()
    })
    .await;
    let mut stream = bounded("connect", TcpStream::connect(server.addr))
        .await
        .unwrap();
    bounded("write", stream.write_all(&tls11_client_hello()))
        .await
        .unwrap();
    let answer = read_to_close(&mut stream).await;
    // No ServerHello (a handshake record, 0x16): at most an alert record (0x15).
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "server answered a TLS 1.1 hello with {answer:02x?}"
    );
    logged(
        &lines,
        Level::WARN,
        &[
            "TLS handshake failed",
            "TLS 1.2 and 1.3 only",
            "peer=127.0.0.1:",
        ],
    )
    .await;
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 0);
    server.stop().await;
}

#[tokio::test]
async fn plaintext_mllp_to_a_tls_port_never_reaches_the_handler() {
    let (lines, _guard) = capture();
    let pki = Pki::new();
    let server = Server::start(ListenerSettings {
        tls: Some(pki.server(true)),
        ..settings()
    })
    .await;
    let mut stream = bounded("connect", TcpStream::connect(server.addr))
        .await
        .unwrap();
    let frame = b"\x0bMSH|^~\\&|LAB|RIVERSIDE|||20250101||ADT^A04|1|P|2.5\r\x1c\r";
    bounded("write", stream.write_all(frame)).await.unwrap();
    let answer = read_to_close(&mut stream).await;
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "plaintext got {answer:02x?}"
    );
    logged(
        &lines,
        Level::WARN,
        &[
            "TLS handshake failed",
            "not a TLS handshake",
            "peer=127.0.0.1:",
        ],
    )
    .await;
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 0);
    server.stop().await;
}

/// Opens a TLS connection with `tls`, returning it and the certificate the server showed.
async fn raw_tls(
    addr: SocketAddr,
    tls: &ClientTls,
) -> (
    Framed<tokio_rustls::client::TlsStream<TcpStream>, MllpCodec>,
    Vec<u8>,
) {
    let tcp = bounded("connect", TcpStream::connect(addr)).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let stream = bounded(
        "handshake",
        TlsConnector::from(tls.config()).connect(name, tcp),
    )
    .await
    .expect("TLS handshake");
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("server certificate")[0]
        .to_vec();
    (Framed::new(stream, MllpCodec::default()), leaf)
}

#[tokio::test]
async fn replaced_certificates_serve_new_handshakes_and_open_connections_keep_going() {
    let (lines, _guard) = capture();
    let pki = Pki::new();
    let first = std::fs::read(&pki.cert_file).unwrap();
    let server = Server::start(ListenerSettings {
        tls: Some(pki.server(false)),
        ..settings()
    })
    .await;
    let client = pki.client(None);
    let (mut open, shown) = raw_tls(server.addr, &client).await;
    assert_eq!(framed_round_trip(&mut open, "before").await, "before");
    assert!(
        String::from_utf8_lossy(&first).contains(&pem_body(&shown)),
        "the first connection shows the first certificate"
    );

    // Replace the certificate and key (a file's modification time is coarse: let it move).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let renewed = pki.ca.issue("courier-test-server-renewed", SERVER_NAMES);
    write(pki.dir.path(), "server.key", &renewed.key);
    write(pki.dir.path(), "server.pem", &renewed.cert);

    assert_eq!(framed_round_trip(&mut open, "during").await, "during");
    let (mut fresh, shown) = raw_tls(server.addr, &client).await;
    assert_eq!(
        shown, renewed.der,
        "a new connection sees the new certificate"
    );
    assert_eq!(framed_round_trip(&mut fresh, "after").await, "after");
    logged(&lines, Level::INFO, &["TLS certificates reloaded"]).await;

    // A broken replacement is refused, naming the file; the renewed certificate stays.
    tokio::time::sleep(Duration::from_millis(50)).await;
    write(
        pki.dir.path(),
        "server.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    );
    let (mut third, shown) = raw_tls(server.addr, &client).await;
    assert_eq!(shown, renewed.der);
    assert_eq!(framed_round_trip(&mut third, "still").await, "still");
    let cert_path = pki.cert_file.display().to_string();
    logged(&lines, Level::WARN, &["do not load", &cert_path]).await;
    assert_eq!(framed_round_trip(&mut open, "end").await, "end");
    server.stop().await;
}

/// Base64 of a DER certificate's first bytes, as they appear in its PEM.
fn pem_body(der: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    // The first 48 bytes: a whole number of 3-byte groups, well within the first PEM line.
    der[..48]
        .chunks(3)
        .flat_map(|c| {
            let n = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
            (0..4)
                .rev()
                .map(move |i| ALPHABET[((n >> (6 * i)) & 63) as usize] as char)
        })
        .collect()
}

async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    bounded("connect", socket.connect(to)).await.unwrap()
}

#[tokio::test]
async fn a_peer_outside_the_allow_list_is_closed_before_a_byte_is_read() {
    let (lines, _guard) = capture();
    let server = Server::start(ListenerSettings {
        allow: vec![
            parse_allow("127.0.0.2").unwrap(),
            parse_allow("10.0.0.0/8").unwrap(),
        ],
        ..settings()
    })
    .await;
    let mut outsider = connect_from("127.0.0.1", server.addr).await;
    // Whatever it sends is never read as a frame.
    let _ = outsider.write_all(b"\x0bMSH|outsider\x1c\r").await;
    assert!(read_to_close(&mut outsider).await.is_empty());
    logged(
        &lines,
        Level::WARN,
        &["allow list", "peer=127.0.0.1:", "listener=test"],
    )
    .await;
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 0);

    let allowed = connect_from("127.0.0.2", server.addr).await;
    let mut allowed = Framed::new(allowed, MllpCodec::default());
    assert_eq!(round_trip(&mut allowed, "MSH|in").await, "MSH|in");
    server.stop().await;
}

#[test]
fn allow_entries_parse_as_networks_or_addresses() {
    assert_eq!(parse_allow("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
    assert_eq!(parse_allow("::1").unwrap().to_string(), "::1/128");
    assert_eq!(
        parse_allow(" 127.0.0.1 ").unwrap().to_string(),
        "127.0.0.1/32"
    );
    assert!(parse_allow("10.0.0.0/33").is_err());
    assert!(parse_allow("localhost").is_err());
    let s = ListenerSettings {
        allow: vec![parse_allow("127.0.0.0/8").unwrap()],
        ..settings()
    };
    assert!(s.allows("127.9.9.9".parse().unwrap()));
    assert!(s.allows("::ffff:127.0.0.1".parse().unwrap()));
    assert!(!s.allows("192.168.0.1".parse().unwrap()));
    assert!(ListenerSettings::new("open").allows("192.168.0.1".parse().unwrap()));
}

/// Opens `count` connections from `source` that each start a frame and then trickle one
/// byte every `every`, never finishing it, until dropped.
async fn trickle(
    source: &'static str,
    to: SocketAddr,
    count: usize,
    every: Duration,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..count {
        let mut stream = connect_from(source, to).await;
        set.spawn(async move {
            if stream.write_all(&[0x0B]).await.is_err() {
                return;
            }
            loop {
                tokio::time::sleep(every).await;
                if stream.write_all(b"x").await.is_err() {
                    return; // closed by the listener
                }
            }
        });
    }
    set
}

#[tokio::test]
async fn trickling_connections_do_not_starve_real_senders() {
    // The issue's scenario: 1,000 trickling connections against the default limit of 256
    // (they trickle every 200 ms rather than every 10 s so the test is quick; eviction does
    // not depend on the pace).
    const FULL: usize = courier_mllp::listener::DEFAULT_MAX_CONNECTIONS;
    let server = Server::start(ListenerSettings {
        max_connections: FULL,
        // Long enough that the idle timeout is not what saves the day.
        idle_timeout: Duration::from_secs(60),
        ..settings()
    })
    .await;
    let started = Instant::now();
    let mut tricklers = trickle("127.0.0.1", server.addr, 1000, Duration::from_millis(200)).await;
    // The listener fills up with tricklers (each newcomer evicting the oldest), which keep
    // trickling: wait until the evicted ones have noticed, leaving exactly a full listener.
    let settled = Instant::now();
    loop {
        while tricklers.try_join_next().is_some() {}
        if tricklers.len() == FULL {
            break;
        }
        assert!(
            settled.elapsed() < Duration::from_secs(5),
            "{} tricklers still open",
            tricklers.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    while tricklers.try_join_next().is_some() {}
    assert_eq!(tricklers.len(), FULL, "a full listener keeps its tricklers");

    for i in 0..5 {
        let asked = Instant::now();
        let mut sender = common::connect(server.addr).await;
        let msg = format!("MSH|real-{i}");
        assert_eq!(round_trip(&mut sender, &msg).await, msg);
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "real sender waited {:?}",
            asked.elapsed()
        );
        // More tricklers keep arriving between real messages.
        let _more = trickle("127.0.0.1", server.addr, 20, Duration::from_millis(200)).await;
    }
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 5);
    drop(tricklers);
    server.stop().await;
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn one_address_cannot_hold_more_than_max_connections_per_ip() {
    let (lines, _guard) = capture();
    let server = Server::start(ListenerSettings {
        max_connections: 16,
        max_connections_per_ip: Some(4),
        idle_timeout: Duration::from_secs(60),
        ..settings()
    })
    .await;
    let _held = trickle("127.0.0.2", server.addr, 4, Duration::from_millis(200)).await;
    // Let the four be admitted before the fifth arrives.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fifth = connect_from("127.0.0.2", server.addr).await;
    assert!(read_to_close(&mut fifth).await.is_empty());
    logged(
        &lines,
        Level::WARN,
        &[
            "limit=\"max_connections_per_ip\"",
            "max_connections_per_ip=4",
            "peer=127.0.0.2:",
        ],
    )
    .await;
    // Another address is not affected.
    let mut other = common::connect(server.addr).await;
    assert_eq!(round_trip(&mut other, "MSH|ok").await, "MSH|ok");
    server.stop().await;
}

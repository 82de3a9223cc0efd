//! The client against a real listener on 127.0.0.1: kept connections, reconnects, timeouts,
//! and errors that name the peer and the limit.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Server, bounded, settings};
use courier_mllp::codec::CodecError;
use courier_mllp::{ClientError, ClientSettings, ListenerSettings, MllpClient};
use tokio::net::TcpListener;

const REPLY: Duration = Duration::from_secs(5);

fn client(addr: std::net::SocketAddr) -> MllpClient {
    MllpClient::new(addr.to_string(), ClientSettings::default())
}

#[tokio::test]
async fn requests_share_one_kept_connection() {
    let server = Server::start(settings()).await;
    let mut client = client(server.addr);
    assert!(!client.is_connected());
    let reply = bounded("request", client.request(b"MSH|one", REPLY)).await;
    assert_eq!(&reply.unwrap()[..], b"MSH|one");
    assert!(client.is_connected());
    let first_id = server.handler.last_connection_id.load(Ordering::SeqCst);
    let reply = bounded("request", client.request(b"MSH|two", REPLY)).await;
    assert_eq!(&reply.unwrap()[..], b"MSH|two");
    assert_eq!(
        server.handler.last_connection_id.load(Ordering::SeqCst),
        first_id
    );
    client.disconnect();
    assert!(!client.is_connected());
    server.stop().await;
}

#[tokio::test]
async fn reconnects_after_the_server_restarts_on_the_same_port() {
    let server = Server::start(settings()).await;
    let addr = server.addr;
    let mut client = client(addr);
    let reply = bounded("request", client.request(b"before", REPLY)).await;
    assert_eq!(&reply.unwrap()[..], b"before");

    server.stop().await;
    // While the server is down: an error, and the connection is gone.
    let err = bounded("request", client.request(b"down", REPLY))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Connect { .. } | ClientError::Closed { .. } | ClientError::Io { .. }
        ),
        "{err:?}"
    );
    assert!(!client.is_connected());

    let listener = TcpListener::bind(addr).await.expect("rebind the same port");
    let server = Server::start_on(listener, settings());
    let reply = bounded("request", client.request(b"after", REPLY)).await;
    assert_eq!(&reply.unwrap()[..], b"after");
    server.stop().await;
}

#[tokio::test]
async fn a_connection_the_server_closed_while_idle_is_replaced_before_writing() {
    let server = Server::start(ListenerSettings {
        idle_timeout: Duration::from_millis(200),
        ..settings()
    })
    .await;
    let mut client = client(server.addr);
    let reply = bounded("request", client.request(b"first", REPLY)).await;
    assert_eq!(&reply.unwrap()[..], b"first");
    let first_id = server.handler.last_connection_id.load(Ordering::SeqCst);

    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(client.is_connected(), "the client has not noticed yet");
    let reply = bounded("request", client.request(b"second", REPLY)).await;
    assert_eq!(&reply.unwrap()[..], b"second");
    assert_ne!(
        server.handler.last_connection_id.load(Ordering::SeqCst),
        first_id
    );
    server.stop().await;
}

#[tokio::test]
async fn after_a_reply_timeout_the_next_request_gets_its_own_reply() {
    let server = Server::start(settings()).await;
    let mut client = client(server.addr);

    let after = Duration::from_millis(100);
    let err = bounded("request", client.request(b"sleep 400 late", after))
        .await
        .unwrap_err();
    match &err {
        ClientError::ReplyTimeout { addr, after: a } => {
            assert_eq!(addr, &server.addr.to_string());
            assert_eq!(*a, after);
        }
        other => panic!("expected ReplyTimeout, got {other:?}"),
    }
    assert!(err.to_string().contains(&server.addr.to_string()));
    assert!(!client.is_connected());

    let reply = bounded("request", client.request(b"fresh", REPLY)).await;
    assert_eq!(&reply.unwrap()[..], b"fresh");
    // Even once the late reply has certainly been written, it never shows up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reply = bounded("request", client.request(b"again", REPLY)).await;
    assert_eq!(&reply.unwrap()[..], b"again");
    server.stop().await;
}

#[tokio::test]
async fn refused_connection_is_a_connect_error_naming_the_address() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut client = client(addr);
    let err = bounded("request", client.request(b"x", REPLY))
        .await
        .unwrap_err();
    assert!(matches!(&err, ClientError::Connect { addr: a, .. } if *a == addr.to_string()));
    assert!(err.to_string().contains(&addr.to_string()));
    assert!(!client.is_connected());
}

#[tokio::test]
async fn oversize_reply_is_a_codec_error_naming_the_limit() {
    let server = Server::start(settings()).await;
    let mut client = MllpClient::new(
        server.addr.to_string(),
        ClientSettings {
            max_frame_size: 64,
            ..ClientSettings::default()
        },
    );
    let err = bounded("request", client.request(b"big 1000", REPLY))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Codec {
                source: CodecError::FrameTooLarge { limit: 64 },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!client.is_connected());
    let reply = bounded("request", client.request(b"big 10", REPLY)).await;
    assert_eq!(&reply.unwrap()[..], b"xxxxxxxxxx");
    server.stop().await;
}

#[tokio::test]
async fn send_writes_without_waiting_and_refuses_unframeable_payloads() {
    let server = Server::start(settings()).await;
    let mut client = client(server.addr);
    bounded("send", client.send(b"silent")).await.unwrap();
    let reply = bounded("request", client.request(b"ping", REPLY)).await;
    assert_eq!(&reply.unwrap()[..], b"ping");

    let err = bounded("send", client.send(b"a\x1cb")).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Codec {
                source: CodecError::ReservedByte {
                    byte: 0x1C,
                    offset: 1
                },
                ..
            }
        ),
        "{err:?}"
    );
    server.stop().await;
}

/// A large payload (written to the stream directly, not through the codec's buffer) arrives
/// framed byte for byte, the connection stays in step for the next request, and a large
/// payload the peer would misread is refused before anything is written.
#[tokio::test]
async fn large_payloads_are_framed_exactly_and_checked() {
    let mut settings = settings();
    settings.max_frame_size = 4 << 20;
    let server = Server::start(settings).await;
    let mut client = MllpClient::new(
        server.addr.to_string(),
        ClientSettings {
            max_frame_size: 4 << 20,
            ..ClientSettings::default()
        },
    );
    // Not one repeated byte, and none of the frame bytes (0x0B, 0x1C).
    let large: Vec<u8> = (0..300_000u32).map(|i| b' ' + (i % 90) as u8).collect();
    for _ in 0..2 {
        let reply = bounded("request", client.request(&large, REPLY)).await;
        assert!(reply.unwrap()[..] == large[..]);
    }
    let reply = bounded("request", client.request(b"small", REPLY)).await;
    assert_eq!(&reply.unwrap()[..], b"small");

    let mut bad = large.clone();
    bad[200_000] = 0x1C;
    let err = bounded("request", client.request(&bad, REPLY))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Codec {
                source: CodecError::ReservedByte {
                    byte: 0x1C,
                    offset: 200_000
                },
                ..
            }
        ),
        "{err:?}"
    );
    let reply = bounded("request", client.request(&large, REPLY)).await;
    assert!(reply.unwrap()[..] == large[..]);
    server.stop().await;
}

//! Destinations: one worker per destination delivers its queue in order, one message at a
//! time, and reads each ACK.
//!
//! AA/CA with MSA-2 equal to the control id sent = delivered. AE/CE, a timeout, a connection
//! failure, an unreadable ACK or an ACK whose MSA-2 is not the control id sent = retried
//! after an exponential backoff (the connection is dropped whenever the stream may be out of
//! step). AR/CR = failed (dead letter). The receiver's error text goes to the debug log only:
//! it may quote patient data.
//!
//! [`durable`] works from the store's per-destination queues (the default); [`memory`] from a
//! bounded channel when the store is off.

pub mod durable;
pub mod memory;
pub mod waiters;

use std::time::Duration;

use bytes::Bytes;
use courier_hl7::ReceivedAck;
use courier_mllp::{ClientSettings, Commit, MllpClient};
use tracing::debug;

use crate::config::{DestinationConfig, DestinationKind, RetryConfig};

pub use memory::{Delivery, DestinationHandle, EnqueueError, spawn};

/// What one attempt to deliver came to.
#[derive(Debug)]
pub enum Attempt {
    /// AA/CA for the control id sent; the receiver's ACK.
    Delivered(Bytes),
    /// AR/CR: do not retry.
    Rejected {
        /// The receiver's ACK.
        ack: Bytes,
        /// Why, without patient data.
        reason: String,
    },
    /// Try again after a backoff.
    Retry {
        /// Why, without patient data.
        reason: String,
    },
}

/// How a destination reaches its receiver: MLLP, a directory or an HTTP endpoint. The
/// worker around it (claims, retries, ordering, dead letters) is the same for all three.
#[derive(Debug)]
pub enum Transport {
    /// MLLP, waiting for the receiver's ACK.
    Mllp(MllpClient),
    /// One file per message.
    File(crate::connectors::file_out::FileSink),
    /// One POST per message.
    Http(crate::connectors::http_out::HttpSink),
}

impl Transport {
    /// The transport for a destination's settings.
    pub fn for_config(cfg: &DestinationConfig) -> Transport {
        match cfg.kind {
            DestinationKind::Mllp => Transport::Mllp(client_for(cfg)),
            DestinationKind::File => {
                Transport::File(crate::connectors::file_out::FileSink::new(cfg))
            }
            DestinationKind::Http => {
                Transport::Http(crate::connectors::http_out::HttpSink::new(cfg))
            }
        }
    }

    /// One attempt to deliver a message. The payload is given, not lent: a transport that
    /// sends another form of it (JSON) lets it go once that is built, so a large message is
    /// not held twice while it is sent.
    pub async fn attempt(
        &mut self,
        payload: Bytes,
        control_id: &str,
        message_type: &str,
        ack_timeout: Duration,
        release: u8,
    ) -> Attempt {
        match self {
            Transport::Mllp(client) => {
                attempt(client, payload, control_id, ack_timeout, release).await
            }
            Transport::File(sink) => sink.attempt(payload, control_id, message_type).await,
            Transport::Http(sink) => sink.attempt(payload, control_id, ack_timeout).await,
        }
    }
}

/// The MLLP client for a destination's settings: over TLS with the material loaded (and
/// checked) with the config, when the destination has a `tls` table.
pub fn client_for(cfg: &DestinationConfig) -> MllpClient {
    debug_assert!(
        cfg.tls.is_none() || cfg.tls_loaded.is_some(),
        "a TLS destination's material is loaded with its config"
    );
    MllpClient::new(
        cfg.address.get_ref().clone(),
        ClientSettings {
            connect_timeout: cfg.connect_timeout,
            max_frame_size: cfg.max_frame_size,
            tls: cfg.tls_loaded.clone(),
            ..ClientSettings::default()
        },
    )
}

/// Sends one message (let go once written, so a large one is not held while its ACK is
/// awaited) and reads its ACK: the HL7 ACK with MLLP release 1, the commit
/// acknowledgement block with release 2.
pub async fn attempt(
    client: &mut MllpClient,
    payload: Bytes,
    control_id: &str,
    ack_timeout: Duration,
    release: u8,
) -> Attempt {
    let reply = match client.request_owned(payload, ack_timeout).await {
        Ok(reply) => reply,
        Err(e) => {
            return Attempt::Retry {
                reason: e.to_string(),
            };
        }
    };
    if release == 2 {
        return match Commit::of(&reply) {
            Some(Commit::Ack) => Attempt::Delivered(reply),
            Some(Commit::Nak) => Attempt::Retry {
                reason: "commit NAK from the receiver (MLLP release 2): not committed".into(),
            },
            None => {
                client.disconnect();
                Attempt::Retry {
                    reason: format!(
                        "expected an MLLP release 2 commit acknowledgement, got a {}-byte block",
                        reply.len()
                    ),
                }
            }
        };
    }
    let ack = match ReceivedAck::parse(&reply) {
        Ok(ack) => ack,
        Err(e) => {
            // We cannot tell what this reply answers: start a fresh connection.
            client.disconnect();
            return Attempt::Retry {
                reason: format!("unreadable ACK: {e}"),
            };
        }
    };
    if ack.control_id != control_id {
        client.disconnect();
        return Attempt::Retry {
            reason: format!(
                "ACK MSA-2 `{}` does not match the control id sent",
                ack.control_id
            ),
        };
    }
    if ack.code.is_accept() {
        return Attempt::Delivered(reply);
    }
    // The receiver's error texts may quote patient data: they go to the debug log only, and
    // the default log carries the ACK code.
    if ack.text.is_some() || !ack.errors.is_empty() {
        debug!(
            %control_id,
            ack = ack.code.as_str(),
            text = ?ack.text,
            errors = ?ack.errors,
            "receiver's acknowledgement text"
        );
    }
    let reason = format!(
        "{} from the receiver (its error text is logged at debug level)",
        ack.code.as_str()
    );
    if ack.code.is_reject() {
        Attempt::Rejected { ack: reply, reason }
    } else {
        Attempt::Retry { reason }
    }
}

/// The wait after a failure, given the previous wait.
pub fn next_backoff(previous: Duration, retry: &RetryConfig) -> Duration {
    (previous * 2).min(retry.max)
}

/// The wait before attempt `attempts + 1`, after `attempts` failures.
pub fn backoff_after(attempts: u32, retry: &RetryConfig) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(30));
    retry.initial.saturating_mul(factor).min(retry.max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let r = RetryConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            max_attempts: None,
        };
        let waits: Vec<_> = (1..=6).map(|a| backoff_after(a, &r).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff_after(u32::MAX, &r), Duration::from_secs(1));
    }
}

//! `courier send`: sends HL7 files to an MLLP receiver and prints each ACK.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use courier::messagefile::read_messages;
use courier_hl7::{LineEndings, Message, ParseOptions, ReceivedAck};
use courier_mllp::{ClientSettings, ClientTls, ClientTlsFiles, MllpClient};

/// TLS options of `courier send`.
#[derive(Debug, clap::Args)]
pub struct TlsArgs {
    /// Send over TLS, trusting the receiver's certificate if it chains to this CA bundle (PEM).
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS.
    #[arg(long, value_name = "PEM", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Name the receiver's certificate must be valid for (default: the host of --to).
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    tls_server_name: Option<String>,
}

impl TlsArgs {
    fn load(&self) -> anyhow::Result<Option<ClientTls>> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let tls = ClientTls::load(ClientTlsFiles {
            ca: ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            server_name: self.tls_server_name.clone(),
        })
        .context("TLS options")?;
        Ok(Some(tls))
    }
}

/// Sends every message of every file, in order, over one connection.
pub fn send(
    files: &[PathBuf],
    to: &str,
    timeout: Duration,
    raw: bool,
    tls: &TlsArgs,
) -> anyhow::Result<ExitCode> {
    let tls = tls.load()?;
    let mut batches = Vec::new();
    for f in files {
        let messages = if raw {
            vec![Bytes::from(
                std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
            )]
        } else {
            read_messages(f)?
        };
        batches.push((f, messages));
    }
    super::runtime()?.block_on(async {
        let mut client = MllpClient::new(
            to,
            ClientSettings {
                tls,
                ..ClientSettings::default()
            },
        );
        let (mut accepted, mut refused) = (0usize, 0usize);
        for (file, messages) in batches {
            for (i, payload) in messages.into_iter().enumerate() {
                let label = format!("{}#{}", file.display(), i + 1);
                let control_id = Message::parse_with(payload.clone(), &lenient())
                    .ok()
                    .and_then(|m| m.control_id())
                    .unwrap_or_default();
                let reply = client
                    .request(&payload, timeout)
                    .await
                    .with_context(|| format!("{label}: sending to {to}"))?;
                match ReceivedAck::parse(&reply) {
                    Ok(ack) => {
                        let mut line = format!("{label}\t{control_id}\t{}", ack.code.as_str());
                        for t in ack.text.iter().chain(&ack.errors) {
                            line.push('\t');
                            line.push_str(t);
                        }
                        let echoed = ack.control_id == control_id;
                        if !echoed {
                            line.push_str(&format!(
                                "\tMSA-2 `{}` does not match the control id sent",
                                ack.control_id
                            ));
                        }
                        println!("{line}");
                        if ack.code.is_accept() && echoed {
                            accepted += 1;
                        } else {
                            refused += 1;
                        }
                    }
                    Err(e) => {
                        println!("{label}\t{control_id}\tunreadable ACK: {e}");
                        refused += 1;
                    }
                }
            }
        }
        eprintln!("{accepted} accepted, {refused} not accepted");
        Ok(if refused == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}

fn lenient() -> ParseOptions {
    ParseOptions {
        line_endings: LineEndings::Lenient,
        ..ParseOptions::default()
    }
}

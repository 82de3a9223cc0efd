//! Hostile test plugin: tries every capability a plugin must not have by default — read a
//! file, list a directory, read the environment, open a TCP connection, resolve a name, read
//! the clock, draw random numbers — and reports what it got in a `ZPR` segment so that the
//! engine's tests can assert that it got errors, not data (and data once a grant is given).
//!
//! Settings (all optional): `file` (default `/etc/hostname`), `dir` (default `/`), `env_var`
//! (default `COURIER_PROBE`), `connect` (default `127.0.0.1:9`), and `sleep_ms`: sleep that
//! long first (the engine must not let a sleep outlast the call's deadline).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{SystemTime, UNIX_EPOCH};

use courier_plugin_sdk::{Context, Error, Message, Outcome, transform};

/// Keeps a report value inside one HL7 field: no delimiters, no line breaks.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_:=.-/".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn err(e: &std::io::Error) -> String {
    format!("denied:{:?}", e.kind())
}

#[transform]
fn probe(msg: &mut Message, ctx: &Context) -> Result<Outcome, Error> {
    let file = ctx
        .setting("file")
        .unwrap_or_else(|| "/etc/hostname".into());
    let dir = ctx.setting("dir").unwrap_or_else(|| "/".into());
    let var = ctx
        .setting("env_var")
        .unwrap_or_else(|| "COURIER_PROBE".into());
    let addr = ctx
        .setting("connect")
        .unwrap_or_else(|| "127.0.0.1:9".into());

    if let Some(ms) = ctx.setting("sleep_ms").and_then(|v| v.parse::<u64>().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    let file = match std::fs::read(&file) {
        Ok(bytes) => format!("read:{}", bytes.len()),
        Err(e) => err(&e),
    };
    let dir = match std::fs::read_dir(&dir) {
        Ok(entries) => format!("listed:{}", entries.count()),
        Err(e) => err(&e),
    };
    let env = match std::env::var(&var) {
        Ok(v) => format!("value:{v}"),
        Err(_) => "absent".to_owned(),
    };
    let env_count = std::env::vars_os().count();
    let tcp = match TcpStream::connect(addr.as_str()) {
        Ok(_) => "connected".to_owned(),
        Err(e) => err(&e),
    };
    let dns = match ("localhost", 80).to_socket_addrs() {
        Ok(addrs) => format!("resolved:{}", addrs.count()),
        Err(e) => err(&e),
    };
    let clock = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let random = RandomState::new().hash_one(1u8);
    msg.append_segment(&format!(
        "ZPR|file={}|dir={}|env={}|envcount={env_count}|tcp={}|dns={}|clock={clock}|random={random}",
        clean(&file),
        clean(&dir),
        clean(&env),
        clean(&tcp),
        clean(&dns),
    ))?;
    Ok(Outcome::Keep)
}

//! `courier plugin replay`: a candidate plugin version against a route's stored messages,
//! before the route is switched to it.
//!
//! Each of the route's last N stored messages (as received) runs through the route's steps
//! in the sandbox with the step that runs the plugin swapped for the candidate (same
//! settings, same grants, which must cover what the candidate asks for), and the result is
//! compared field by field with what the current version produced: the message the route
//! sent, from the store, or — for one it did not send — the current steps run again. Every
//! difference is printed with its HL7 position. Nothing is sent and the store is only read.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use courier::config::Config;
use courier::package;
use courier::steps::{RouteResult, Steps, run_route};
use courier_hl7::Message;
use courier_store::{Search, SqliteStore, Store, StoreSettings};

/// `courier plugin replay CANDIDATE --route R --last N`
pub fn replay(
    candidate: &str,
    route: &str,
    last: u32,
    config_path: &Path,
    store_dir: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (name, version) = package::parse_ref(candidate).map_err(anyhow::Error::msg)?;
    let (dir, trusted, _) = package::plugins_section(config_path).map_err(anyhow::Error::msg)?;
    let route_index = config
        .routes
        .iter()
        .position(|r| r.get_ref().name == route)
        .with_context(|| format!("{}: no route named `{route}`", config_path.display()))?;
    let step_index = config.routes[route_index]
        .get_ref()
        .steps
        .iter()
        .position(|s| {
            s.get_ref()
                .package
                .as_ref()
                .is_some_and(|p| p.manifest.name == name)
        })
        .with_context(|| format!("route `{route}` has no step running plugin {name}"))?;
    let installed = package::load_installed(&dir, &name, &version, &trusted)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let current_id = {
        let sc = config.routes[route_index].get_ref().steps[step_index].get_ref();
        if let Err(cap) = installed.manifest.check_grants(&sc.grants) {
            bail!(
                "{} asks for the capability `{cap}`, which route `{route}` does not grant ({})",
                installed.manifest.id(),
                cap.grant_hint()
            );
        }
        installed
            .manifest
            .apply_settings(&mut sc.settings.clone())
            .map_err(|e| anyhow::anyhow!("route `{route}`: {e}"))?;
        sc.package
            .as_ref()
            .map(|p| p.manifest.id())
            .unwrap_or_default()
    };
    let mut cand_config = config.clone();
    {
        let sc = cand_config.routes[route_index].get_mut().steps[step_index].get_mut();
        sc.package = Some(installed.clone());
    }
    let current = Steps::load(&config, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cand = Steps::load(&cand_config, None).map_err(|e| anyhow::anyhow!("{e}"))?;

    let store_dir = store_dir.unwrap_or_else(|| config.store_dir());
    if !store_dir.join(SqliteStore::FILE_NAME).exists() {
        bail!("no message store in {}", store_dir.display());
    }
    let details = super::runtime()?.block_on(async {
        let store = SqliteStore::open_secondary(&store_dir, StoreSettings::default())
            .with_context(|| format!("opening the store in {}", store_dir.display()))?;
        // The store is searched newest first, a page at a time, for messages that ran
        // through this route (they have a step record or a delivery on it).
        let mut found = Vec::new();
        let mut offset = 0;
        const PAGE: u32 = 200;
        while (found.len() as u32) < last {
            let page = store
                .search(&Search {
                    limit: PAGE,
                    offset,
                    ..Search::default()
                })
                .await?;
            for s in &page {
                if (found.len() as u32) >= last {
                    break;
                }
                if let Some(d) = store.message(s.id).await?
                    && (d.steps.iter().any(|st| st.route == route)
                        || d.deliveries.iter().any(|dl| dl.route == route))
                {
                    found.push(d);
                }
            }
            if (page.len() as u32) < PAGE {
                break;
            }
            offset += PAGE;
        }
        anyhow::Ok(found)
    })?;
    if details.is_empty() {
        println!("no stored messages of route `{route}` to replay");
        return Ok(ExitCode::SUCCESS);
    }
    let route_name: Arc<str> = route.into();
    let mut differing = 0;
    println!(
        "replaying the last {} message(s) of route `{route}`: {current_id} (current) against {} (candidate)",
        details.len(),
        installed.manifest.id()
    );
    // Oldest first reads best.
    for d in details.iter().rev() {
        let options = config
            .listeners
            .iter()
            .find(|l| l.get_ref().name == d.listener)
            .map(|l| l.get_ref().parse_options())
            .unwrap_or_default();
        let msg = match Message::parse_with(d.raw.clone(), &options) {
            Ok(m) => m,
            Err(e) => {
                println!(
                    "message {} ({}): cannot parse it: {e}",
                    d.id.0, d.control_id
                );
                continue;
            }
        };
        let control: Arc<str> = d.control_id.as_str().into();
        let mut records = Vec::new();
        // What the current version produced: the message the route sent, as stored; for
        // one it did not send (dropped, failed, still queued), the current steps run again.
        let stored = d
            .deliveries
            .iter()
            .find(|x| x.route == route)
            .and_then(|x| Message::parse_with(x.payload.clone(), &options).ok());
        let a = match stored {
            Some(sent) => RouteResult::Send(sent),
            None => run_route(
                &current,
                route_index,
                &route_name,
                &control,
                &msg,
                &mut records,
            ),
        };
        let b = run_route(
            &cand,
            route_index,
            &route_name,
            &control,
            &msg,
            &mut records,
        );
        let lines = compare(&a, &b);
        if lines.is_empty() {
            println!("message {} ({}): no differences", d.id.0, d.control_id);
        } else {
            differing += 1;
            println!(
                "message {} ({}): {} difference(s)",
                d.id.0,
                d.control_id,
                lines.len()
            );
            for l in lines {
                println!("  {l}");
            }
        }
    }
    println!(
        "{differing} of {} message(s) differ; nothing was sent or changed",
        details.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// The differences between what the current and the candidate version made of a message.
fn compare(a: &RouteResult, b: &RouteResult) -> Vec<String> {
    match (a, b) {
        (RouteResult::Send(x), RouteResult::Send(y)) => field_diff(&x.encode(), &y.encode()),
        _ => {
            let (da, db) = (describe(a), describe(b));
            if da == db {
                Vec::new()
            } else {
                vec![format!("outcome: {da} → {db}")]
            }
        }
    }
}

fn describe(r: &RouteResult) -> String {
    match r {
        RouteResult::Send(_) => "send".into(),
        RouteResult::Dropped(why) => format!("drop ({why})"),
        RouteResult::Failed(why) => format!("error ({why})"),
    }
}

/// Field-by-field differences of two ER7 messages, named `SEG[n]-i` (the segment's
/// occurrence, 1-based, shown when there is more than one; the field's HL7 number).
fn field_diff(a: &[u8], b: &[u8]) -> Vec<String> {
    let fields = |bytes: &[u8]| -> Vec<(String, Vec<String>)> {
        let text = String::from_utf8_lossy(bytes).into_owned();
        let sep = text.chars().nth(3).unwrap_or('|');
        let mut seen: std::collections::HashMap<String, usize> = Default::default();
        text.split(['\r', '\n'])
            .filter(|l| !l.is_empty())
            .map(|line| {
                let parts: Vec<String> = line.split(sep).map(str::to_owned).collect();
                let name = parts[0].clone();
                let n = seen.entry(name.clone()).or_default();
                *n += 1;
                (format!("{name}[{n}]"), parts)
            })
            .collect()
    };
    let (fa, fb) = (fields(a), fields(b));
    let index = |v: &[(String, Vec<String>)]| -> std::collections::BTreeMap<String, Vec<String>> {
        v.iter().cloned().collect()
    };
    let (ia, ib) = (index(&fa), index(&fb));
    let mut order: Vec<String> = fa.iter().map(|(k, _)| k.clone()).collect();
    for (k, _) in &fb {
        if !order.contains(k) {
            order.push(k.clone());
        }
    }
    let mut out = Vec::new();
    for key in order {
        let (seg, occ) = key.split_once('[').unwrap_or((&key, ""));
        let label = |i: usize| {
            // MSH-1 is the separator itself: MSH's fields are numbered one up.
            let n = if seg == "MSH" { i + 1 } else { i };
            if occ == "1]" {
                format!("{seg}-{n}")
            } else {
                format!("{seg}[{occ}-{n}")
            }
        };
        let empty = Vec::new();
        let va = ia.get(&key).unwrap_or(&empty);
        let vb = ib.get(&key).unwrap_or(&empty);
        for i in 1..va.len().max(vb.len()) {
            let x = va.get(i).map(String::as_str).unwrap_or("");
            let y = vb.get(i).map(String::as_str).unwrap_or("");
            if x != y {
                out.push(format!("{}: {x:?} → {y:?}", label(i)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_compared_by_position() {
        let a = b"MSH|^~\\&|A|B|C|D\rPID|1||100^^^R^MR||Doe^Jane||||||||(217)555-0142\rOBX|1|x\rOBX|2|y\r";
        let b =
            b"MSH|^~\\&|A|B|X|D\rPID|1||100^^^R^MR||DOE^JANE||||||||+12175550142\rOBX|1|x\rOBX|2|z\r";
        let d = field_diff(a, b);
        assert_eq!(
            d,
            vec![
                "MSH-5: \"C\" → \"X\"".to_owned(),
                "PID-5: \"Doe^Jane\" → \"DOE^JANE\"".to_owned(),
                "PID-13: \"(217)555-0142\" → \"+12175550142\"".to_owned(),
                "OBX[2]-2: \"y\" → \"z\"".to_owned(),
            ]
        );
    }
}

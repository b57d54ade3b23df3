//! The CLI side of the router's API: `weft status`, `weft report`, `weft connect` and
//! `weft forget` over the unix socket.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use weft_http::UnixHttp;

use crate::cli::ClientArgs;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Adds the "cannot reach the router" hint to connection failures.
fn explain(args: &ClientArgs, e: weft_http::HttpError) -> anyhow::Error {
    let unreachable = e.is_unreachable();
    let e = anyhow::Error::new(e);
    if unreachable {
        e.context(format!(
            "cannot reach the weft router at {} (pass --socket or set WEFT_SOCKET if it listens elsewhere)",
            args.socket.display()
        ))
    } else {
        e
    }
}

/// `GET path`, requiring a 2xx answer; the body as text.
fn get_text(args: &ClientArgs, path: &str) -> anyhow::Result<String> {
    let client = UnixHttp::new(&args.socket).with_timeout(TIMEOUT);
    client.get_text(path).map_err(|e| explain(args, e))
}

/// A Weave form body: `peer=a&peer=b[&replace=true]`.
fn peer_form(peers: &[String], replace: bool) -> String {
    let mut parts: Vec<String> = peers
        .iter()
        .map(|p| {
            format!(
                "peer={}",
                p.replace('%', "%25")
                    .replace('&', "%26")
                    .replace('+', "%2B")
                    .replace(' ', "+")
            )
        })
        .collect();
    if replace {
        parts.push("replace=true".into());
    }
    parts.join("&")
}

fn post_form(args: &ClientArgs, path: &str, body: String) -> anyhow::Result<ExitCode> {
    let client = UnixHttp::new(&args.socket).with_timeout(TIMEOUT);
    let resp = client
        .post(path, "application/x-www-form-urlencoded", body.as_bytes())
        .map_err(|e| explain(args, e))?;
    if !(200..300).contains(&resp.status) {
        bail!("POST {path}: {} {}", resp.status, resp.text().trim());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn connect(args: &ClientArgs, peers: &[String], replace: bool) -> anyhow::Result<ExitCode> {
    post_form(args, "/connect", peer_form(peers, replace))
}

pub fn forget(args: &ClientArgs, peers: &[String]) -> anyhow::Result<ExitCode> {
    post_form(args, "/forget", peer_form(peers, false))
}

pub fn status(args: &ClientArgs, what: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        let report: serde_json::Value = serde_json::from_str(&get_text(args, "/report")?)
            .context("the router's /report is not JSON")?;
        let part = match what {
            None => report,
            Some("peers") => report["Router"]["Peers"].clone(),
            Some("connections") => report["Router"]["Connections"].clone(),
            Some("targets") => report["Router"]["Targets"].clone(),
            Some("ipam") => report["IPAM"].clone(),
            Some(other) => {
                bail!("unknown status {other:?}: use peers, connections, targets or ipam")
            }
        };
        println!("{}", serde_json::to_string_pretty(&part)?);
        return Ok(ExitCode::SUCCESS);
    }
    let path = match what {
        None => "/status".to_string(),
        Some(w @ ("peers" | "connections" | "targets" | "ipam")) => format!("/status/{w}"),
        Some(other) => bail!("unknown status {other:?}: use peers, connections, targets or ipam"),
    };
    print!("{}", get_text(args, &path)?);
    Ok(ExitCode::SUCCESS)
}

pub fn report(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let body = get_text(args, "/report")?;
    let v: serde_json::Value =
        serde_json::from_str(&body).context("the router's /report is not JSON")?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(ExitCode::SUCCESS)
}

fn delete(args: &ClientArgs, path: &str) -> anyhow::Result<String> {
    let client = UnixHttp::new(&args.socket).with_timeout(TIMEOUT);
    let resp = client.delete(path).map_err(|e| explain(args, e))?;
    if !(200..300).contains(&resp.status) {
        bail!("DELETE {path}: {} {}", resp.status, resp.text().trim());
    }
    Ok(resp.text())
}

pub fn rmpeer(args: &ClientArgs, peer: &str) -> anyhow::Result<ExitCode> {
    if peer.is_empty() || peer.contains('/') {
        bail!("{peer:?} is not a peer name or nickname");
    }
    print!("{}", delete(args, &format!("/peer/{peer}"))?);
    Ok(ExitCode::SUCCESS)
}

pub fn reset(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    delete(args, "/peer")?;
    println!("this peer's address ranges were handed to another peer; stop the router now and remove its store (--db-prefix) before it rejoins");
    Ok(ExitCode::SUCCESS)
}

//! The CLI side of the router's API: `weft status` and `weft report` over the unix socket.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use weft_cni::http;

use crate::cli::ClientArgs;

const TIMEOUT: Duration = Duration::from_secs(10);

fn get(args: &ClientArgs, path: &str) -> anyhow::Result<http::Response> {
    http::request(&args.socket, "GET", path, b"", TIMEOUT).with_context(|| {
        format!(
            "the weft router is not reachable at {} (is `weft router` running? pass --socket or set WEFT_SOCKET)",
            args.socket.display()
        )
    })
}

fn ok_body(resp: http::Response, path: &str) -> anyhow::Result<String> {
    if resp.status != 200 {
        bail!(
            "GET {path}: {} {}: {}",
            resp.status,
            resp.reason,
            resp.text()
        );
    }
    Ok(String::from_utf8_lossy(&resp.body).into_owned())
}

pub fn status(args: &ClientArgs, what: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        let report: serde_json::Value =
            serde_json::from_str(&ok_body(get(args, "/report")?, "/report")?)
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
    print!("{}", ok_body(get(args, &path)?, &path)?);
    Ok(ExitCode::SUCCESS)
}

pub fn report(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let body = ok_body(get(args, "/report")?, "/report")?;
    let v: serde_json::Value =
        serde_json::from_str(&body).context("the router's /report is not JSON")?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(ExitCode::SUCCESS)
}

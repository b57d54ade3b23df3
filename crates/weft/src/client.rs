//! The CLI side of the router's API: `weft status` and `weft report` over the unix socket.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
// The shared unix-socket client (crate `weft-http`), through weft-cni's re-export.
use weft_http::UnixHttp;

use crate::cli::ClientArgs;

const TIMEOUT: Duration = Duration::from_secs(10);

/// `GET path`, requiring a 2xx answer; the body as text.
fn get_text(args: &ClientArgs, path: &str) -> anyhow::Result<String> {
    let client = UnixHttp::new(&args.socket).with_timeout(TIMEOUT);
    client.get_text(path).map_err(|e| {
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
    })
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

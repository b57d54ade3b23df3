//! Weave's HTTP API, served on TCP (`--http-addr`) and on the unix socket (`--socket`).
//!
//! Routes and response formats follow Weave Net 2.8 so that its tooling keeps working:
//! addresses come back as text (`10.32.0.5/12`), `/status*` as text, `/report` and `/ip` as JSON.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Path, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ipnet::Ipv4Net;

use super::ipam::IpamCmd;
use super::{prepare_socket_path, report, State, EXPOSE_ID};

type Shared = Arc<State>;

pub fn routes(state: Shared) -> Router {
    Router::new()
        .route("/ip", get(list_owned))
        .route(
            "/ip/{id}",
            post(allocate_default).delete(release).get(lookup),
        )
        .route("/ip/{id}/{ip}", axum::routing::delete(release_one))
        .route(
            "/ip/{id}/{ip}/{prefixlen}",
            post(allocate_in_subnet).put(claim),
        )
        .route("/expose/{ip}/{prefixlen}", post(expose))
        .route("/ipinfo/defaultsubnet", get(default_subnet))
        .route("/status", get(status))
        .route("/status/{what}", get(status_part))
        .route("/report", get(report_json))
        .route("/connect", post(connect))
        .route("/peer", axum::routing::delete(shutdown_ipam))
        .route("/peer/{name}", axum::routing::delete(rmpeer))
        .route("/forget", post(forget))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves the API until SIGTERM or SIGINT, then removes the socket.
pub async fn serve(state: Shared) -> anyhow::Result<()> {
    let app = routes(state.clone());
    let mut tasks = tokio::task::JoinSet::new();

    prepare_socket_path(&state.cfg.socket)?;
    let unix = tokio::net::UnixListener::bind(&state.cfg.socket)
        .with_context(|| format!("binding the API socket {}", state.cfg.socket.display()))?;
    std::fs::set_permissions(&state.cfg.socket, std::fs::Permissions::from_mode(0o600))
        .context("restricting the API socket to mode 0600")?;
    tasks.spawn(serve_on(unix, app.clone()));

    if let Some(addr) = state.cfg.http_addr {
        let tcp = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("binding the HTTP API on {addr} (is another router running?)")
        })?;
        tasks.spawn(serve_on(tcp, app.clone()));
    }
    if let Some(addr) = state.cfg.metrics_addr {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics endpoint on {addr}"))?;
        let metrics_app = Router::new()
            .route("/metrics", get(metrics))
            .with_state(state.clone());
        tasks.spawn(serve_on(tcp, metrics_app));
    }

    state.ready.store(true, Ordering::Release);
    tracing::info!(socket = %state.cfg.socket.display(), http = ?state.cfg.http_addr, "router ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
        Some(r) = tasks.join_next() => match r {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("an API server task failed: {e}")),
        },
    };
    tracing::info!("router stopping");
    let _ = std::fs::remove_file(&state.cfg.socket);
    result
}

async fn serve_on<L>(listener: L, app: Router) -> anyhow::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    axum::serve(listener, app)
        .await
        .context("serving the HTTP API")
}

/// An API error: a status code and a plain-text message, as Weave answers.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, format!("{}\n", self.1)).into_response()
    }
}

impl From<super::ipam::IpamError> for ApiError {
    fn from(e: super::ipam::IpamError) -> Self {
        let code = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError(code, e.msg)
    }
}

fn not_ready() -> ApiError {
    ApiError(
        StatusCode::SERVICE_UNAVAILABLE,
        "IPAM is not ready yet; try again shortly".into(),
    )
}

fn parse_cidr(ip: &str, prefixlen: &str) -> Result<Ipv4Net, ApiError> {
    let addr: Ipv4Addr = ip.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("invalid IP address {ip:?}"),
        )
    })?;
    let len: u8 = prefixlen.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("invalid prefix length {prefixlen:?}"),
        )
    })?;
    Ipv4Net::new(addr, len).map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("invalid prefix length {prefixlen:?}"),
        )
    })
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 1024 || id.chars().any(|c| c.is_control()) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("invalid ID {id:?}"),
        ));
    }
    Ok(())
}

/// Sends an IPAM request to the mesh actor and waits for its answer (which may come after
/// gossip with other peers).
async fn ipam_call<T>(
    st: &Shared,
    make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> IpamCmd,
) -> Result<T, ApiError> {
    if !st.is_ready() {
        return Err(not_ready());
    }
    let (reply, rx) = tokio::sync::oneshot::channel();
    if !st.mesh.ipam(make(reply)) {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the router is shutting down".into(),
        ));
    }
    rx.await.map_err(|_| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the router is shutting down".into(),
        )
    })
}

async fn allocate_default(
    AxState(st): AxState<Shared>,
    Path(id): Path<String>,
) -> Result<String, ApiError> {
    check_id(&id)?;
    let is_container = id != EXPOSE_ID;
    let net = ipam_call(&st, |reply| IpamCmd::Allocate {
        id,
        subnet: None,
        is_container,
        reply,
    })
    .await??;
    Ok(net.to_string())
}

async fn allocate_in_subnet(
    AxState(st): AxState<Shared>,
    Path((id, ip, prefixlen)): Path<(String, String, String)>,
) -> Result<String, ApiError> {
    check_id(&id)?;
    let subnet = parse_cidr(&ip, &prefixlen)?.trunc();
    let is_container = id != EXPOSE_ID;
    let net = ipam_call(&st, |reply| IpamCmd::Allocate {
        id,
        subnet: Some(subnet),
        is_container,
        reply,
    })
    .await??;
    Ok(net.to_string())
}

async fn claim(
    AxState(st): AxState<Shared>,
    Path((id, ip, prefixlen)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    check_id(&id)?;
    let cidr = parse_cidr(&ip, &prefixlen)?;
    let is_container = id != EXPOSE_ID;
    ipam_call(&st, |reply| IpamCmd::Claim {
        id,
        cidr,
        is_container,
        reply,
    })
    .await??;
    Ok(StatusCode::NO_CONTENT)
}

async fn release(
    AxState(st): AxState<Shared>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_id(&id)?;
    ipam_call(&st, |reply| IpamCmd::Release { id, reply }).await??;
    Ok(StatusCode::NO_CONTENT)
}

async fn release_one(
    AxState(st): AxState<Shared>,
    Path((id, ip)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    check_id(&id)?;
    let addr: Ipv4Addr = ip.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("invalid IP address {ip:?}"),
        )
    })?;
    ipam_call(&st, |reply| IpamCmd::ReleaseAddr { id, addr, reply }).await??;
    Ok(StatusCode::NO_CONTENT)
}

async fn lookup(AxState(st): AxState<Shared>, Path(id): Path<String>) -> Result<String, ApiError> {
    check_id(&id)?;
    let addrs = ipam_call(&st, |reply| IpamCmd::Lookup { id, reply }).await?;
    if addrs.is_empty() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "no addresses for this ID".into(),
        ));
    }
    Ok(addrs.iter().map(|a| format!("{a}\n")).collect())
}

async fn list_owned(AxState(st): AxState<Shared>) -> Result<Json<serde_json::Value>, ApiError> {
    let owned = ipam_call(&st, |reply| IpamCmd::Owned { reply }).await?;
    let list: Vec<_> = owned
        .into_iter()
        .map(|o| {
            serde_json::json!({
                "containerid": o.id,
                "addrs": o.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "is_container": o.is_container,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "owned": list })))
}

/// `DELETE /peer/{name}`: Weave's rmpeer, taking over the ranges of a peer that is gone.
async fn rmpeer(
    AxState(st): AxState<Shared>,
    Path(peer): Path<String>,
) -> Result<String, ApiError> {
    Ok(ipam_call(&st, |reply| IpamCmd::RmPeer { peer, reply }).await??)
}

/// `DELETE /peer`: hand this peer's ranges to another peer before leaving (`weft reset`).
async fn shutdown_ipam(AxState(st): AxState<Shared>) -> Result<StatusCode, ApiError> {
    ipam_call(&st, |reply| IpamCmd::Shutdown { reply }).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn expose(
    AxState(st): AxState<Shared>,
    Path((ip, prefixlen)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let net = parse_cidr(&ip, &prefixlen)?;
    let index = st.bridge_index;
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        let mut nl = weft_dataplane::netlink::Netlink::open().map_err(|e| e.to_string())?;
        match nl.add_address(index, net) {
            Ok(()) | Err(weft_dataplane::Error::Exists(_)) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("adding {net} to the bridge: {e}"),
        )
    })?;
    Ok(StatusCode::OK)
}

async fn default_subnet(AxState(st): AxState<Shared>) -> String {
    st.cfg.default_subnet.to_string()
}

type Snapshot = (
    weft_mesh::MeshStatus,
    super::mesh::ConnAttrs,
    super::ipam::IpamSnapshot,
);

/// The mesh and IPAM state for status pages, taken from the mesh actor.
async fn snapshot(st: &State) -> Result<Snapshot, Response> {
    let unavailable = |m: &str| (StatusCode::SERVICE_UNAVAILABLE, format!("{m}\n")).into_response();
    if !st.is_ready() {
        return Err(unavailable("not ready"));
    }
    let (m, attrs) = st
        .mesh
        .status()
        .await
        .ok_or_else(|| unavailable("the mesh is not running"))?;
    let (reply, rx) = tokio::sync::oneshot::channel();
    if !st.mesh.ipam(IpamCmd::Status { reply }) {
        return Err(unavailable("the mesh is not running"));
    }
    let ipam = rx
        .await
        .map_err(|_| unavailable("the mesh is not running"))?;
    Ok((m, attrs, ipam))
}

async fn status(AxState(st): AxState<Shared>) -> Response {
    match snapshot(&st).await {
        Ok((m, _, ipam)) => report::status_text(&st, &m, &ipam).into_response(),
        Err(r) => r,
    }
}

async fn status_part(AxState(st): AxState<Shared>, Path(what): Path<String>) -> Response {
    let (m, attrs, ipam) = match snapshot(&st).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match report::status_part(&st, &m, &attrs, &ipam, &what) {
        Some(text) => text.into_response(),
        None => (
            StatusCode::NOT_FOUND,
            format!("unknown status {what:?}: use peers, connections, targets or ipam\n"),
        )
            .into_response(),
    }
}

async fn report_json(AxState(st): AxState<Shared>) -> Response {
    match snapshot(&st).await {
        Ok((m, attrs, ipam)) => Json(report::report(&st, &m, &attrs, &ipam)).into_response(),
        Err(r) => r,
    }
}

/// The `peer` values of a Weave form body (`peer=a&peer=b&replace=true`).
fn form_peers(body: &str) -> (Vec<String>, bool) {
    let mut peers = Vec::new();
    let mut replace = false;
    for pair in body.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "peer" => peers.extend(v.split_whitespace().map(str::to_owned)),
            "replace" => replace = v == "true",
            _ => {}
        }
    }
    (peers, replace)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn connect(AxState(st): AxState<Shared>, body: String) -> Result<StatusCode, ApiError> {
    let (peers, replace) = form_peers(&body);
    st.mesh
        .connect(peers, replace)
        .await
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    Ok(StatusCode::OK)
}

async fn forget(AxState(st): AxState<Shared>, body: String) -> StatusCode {
    let (peers, _) = form_peers(&body);
    st.mesh.forget(peers);
    StatusCode::OK
}

async fn metrics(AxState(st): AxState<Shared>) -> Response {
    if let Ok((m, _, ipam)) = snapshot(&st).await {
        st.metrics.observe_mesh(&m, st.mesh.encrypted);
        st.metrics.observe_ipam(&ipam);
    }
    if let Some(dp) = &st.dp_stats {
        st.metrics.observe_dataplane(dp);
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
            .parse()
            .expect("static header"),
    );
    (headers, st.metrics.encode()).into_response()
}

//! A stand-in for the weft router's IPAM API: unix-socket HTTP/1.1, one thread per connection,
//! a simple first-free allocator over 10.32.0.0/12 (10.32.0.1 is the bridge, `weave:expose`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ipnet::Ipv4Net;
use serde_json::json;

#[derive(Debug, Default)]
pub struct State {
    /// owner -> (addresses, is_container)
    pub owners: BTreeMap<String, (Vec<Ipv4Net>, bool)>,
    pub ready: bool,
    /// "METHOD /path" of every request, in order.
    pub log: Vec<String>,
}

pub struct FakeRouter {
    path: PathBuf,
    pub state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

pub const RANGE: &str = "10.32.0.0/12";

impl FakeRouter {
    pub fn start(path: &Path) -> FakeRouter {
        let listener = UnixListener::bind(path).expect("bind fake router socket");
        let mut st = State {
            ready: true,
            ..State::default()
        };
        st.owners.insert(
            "weave:expose".into(),
            (vec!["10.32.0.1/12".parse().unwrap()], false),
        );
        let state = Arc::new(Mutex::new(st));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2) = (state.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s3 = s2.clone();
                std::thread::spawn(move || serve(conn, &s3));
            }
        });
        FakeRouter {
            path: path.to_path_buf(),
            state,
            stop,
            handle: Some(handle),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn set_ready(&self, ready: bool) {
        self.state.lock().unwrap().ready = ready;
    }

    pub fn addrs_of(&self, id: &str) -> Vec<Ipv4Net> {
        self.state
            .lock()
            .unwrap()
            .owners
            .get(id)
            .map(|(a, _)| a.clone())
            .unwrap_or_default()
    }

    pub fn owners(&self) -> Vec<String> {
        self.state.lock().unwrap().owners.keys().cloned().collect()
    }

    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    /// Reserves an address for `id` directly (as if an earlier ADD had happened).
    pub fn reserve(&self, id: &str) -> Ipv4Net {
        let mut st = self.state.lock().unwrap();
        allocate(&mut st, id, RANGE.parse().unwrap())
    }

    /// Forgets `id` (as if the router lost the reservation).
    pub fn forget(&self, id: &str) {
        self.state.lock().unwrap().owners.remove(id);
    }

    /// Stops answering: the socket file goes away and the listener closes.
    pub fn shutdown(&mut self) {
        if self.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = UnixStream::connect(&self.path);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for FakeRouter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn allocate(st: &mut State, id: &str, subnet: Ipv4Net) -> Ipv4Net {
    if let Some((addrs, _)) = st.owners.get(id) {
        if let Some(a) = addrs.iter().find(|a| subnet.contains(&a.addr())) {
            return *a;
        }
    }
    let used: Vec<Ipv4Addr> = st
        .owners
        .values()
        .flat_map(|(a, _)| a.iter().map(|n| n.addr()))
        .collect();
    let addr = subnet
        .hosts()
        .find(|h| !used.contains(h))
        .expect("fake router: subnet full");
    let net = Ipv4Net::new(addr, subnet.prefix_len()).unwrap();
    st.owners
        .entry(id.to_string())
        .or_insert_with(|| (vec![], true))
        .0
        .push(net);
    net
}

fn respond(conn: &mut UnixStream, status: &str, body: &str) {
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn serve(mut conn: UnixStream, state: &Mutex<State>) {
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
        if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if req.len() > 65536 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&req[..head_end]).into_owned();
    let first = head.lines().next().unwrap_or("").to_string();
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut st = state.lock().unwrap();
    st.log.push(format!("{method} {path}"));
    if path == "/status" && method == "GET" {
        if st.ready {
            respond(&mut conn, "200 OK", "ready");
        } else {
            respond(&mut conn, "503 Service Unavailable", "IPAM not ready");
        }
        return;
    }
    if !st.ready {
        respond(&mut conn, "503 Service Unavailable", "IPAM not ready");
        return;
    }
    if path == "/ip" && method == "GET" {
        let owned: Vec<_> = st
            .owners
            .iter()
            .map(|(id, (addrs, is_container))| {
                json!({
                    "containerid": id,
                    "addrs": addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    "is_container": is_container,
                })
            })
            .collect();
        respond(&mut conn, "200 OK", &json!({ "owned": owned }).to_string());
        return;
    }
    let Some(rest) = path.strip_prefix("/ip/") else {
        respond(&mut conn, "404 Not Found", "no such route");
        return;
    };
    let (id, subnet) = match rest.split_once('/') {
        Some((id, s)) => (id.to_string(), Some(s.to_string())),
        None => (rest.to_string(), None),
    };
    match method.as_str() {
        "POST" => {
            let subnet: Ipv4Net = match subnet {
                Some(s) => match s.parse() {
                    Ok(n) => n,
                    Err(_) => {
                        respond(&mut conn, "400 Bad Request", "bad subnet");
                        return;
                    }
                },
                None => RANGE.parse().unwrap(),
            };
            let a = allocate(&mut st, &id, subnet);
            respond(&mut conn, "200 OK", &a.to_string());
        }
        "DELETE" => {
            if st.owners.remove(&id).is_some() {
                respond(&mut conn, "204 No Content", "");
            } else {
                respond(
                    &mut conn,
                    "404 Not Found",
                    &format!("Delete: no addresses for {id}"),
                );
            }
        }
        _ => respond(&mut conn, "405 Method Not Allowed", ""),
    }
}

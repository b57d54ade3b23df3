//! Running processes inside a lab network namespace.
use crate::error::Context;
use crate::{Error, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};
use weft_dataplane::netns::NetNs;

/// Makes `cmd` start inside the network namespace `ns`, the way `ip netns exec` does: the child
/// `setns()`es into `ns` before exec, then (best effort) gets a private mount namespace with a
/// fresh `/sys` so that `/sys/class/net` shows the namespace's own interfaces.
///
/// A duplicate of the namespace fd is owned by the command, so the command stays valid after
/// `ns` is dropped.
pub fn in_netns(cmd: &mut Command, ns: &NetNs) -> Result<()> {
    let fd: OwnedFd = ns
        .fd()
        .try_clone_to_owned()
        .ctx(|| format!("duplicating the fd of netns {}", ns.path().display()))?;
    // SAFETY: the closure runs in the forked child before exec and only makes raw system calls
    // (setns, unshare, mount, umount2) with pre-built C strings: no allocation, no locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd.as_fd().as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::unshare(libc::CLONE_NEWNS) == 0 {
                let none = std::ptr::null::<libc::c_char>();
                libc::mount(
                    none,
                    c"/".as_ptr(),
                    none,
                    libc::MS_SLAVE | libc::MS_REC,
                    std::ptr::null(),
                );
                libc::umount2(c"/sys".as_ptr(), libc::MNT_DETACH);
                libc::mount(
                    c"sysfs".as_ptr(),
                    c"/sys".as_ptr(),
                    c"sysfs".as_ptr(),
                    0,
                    std::ptr::null(),
                );
            }
            Ok(())
        });
    }
    Ok(())
}

/// Spawns `cmd` inside `ns`.
pub fn spawn_in(ns: &NetNs, cmd: &mut Command) -> Result<Child> {
    in_netns(cmd, ns)?;
    cmd.spawn().ctx(|| {
        format!(
            "starting {:?} in netns {}",
            cmd.get_program(),
            ns.path().display()
        )
    })
}

/// Runs `cmd` inside `ns` to completion and collects its output (stdin is null).
pub fn exec_in(ns: &NetNs, cmd: &mut Command) -> Result<Output> {
    in_netns(cmd, ns)?;
    cmd.stdin(Stdio::null());
    cmd.output().ctx(|| {
        format!(
            "running {:?} in netns {}",
            cmd.get_program(),
            ns.path().display()
        )
    })
}

/// Output of [`run_with_input`].
#[derive(Debug)]
pub struct TimedOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Spawns `cmd` (already configured, e.g. with [`in_netns`]), writes `input` to its stdin,
/// collects stdout/stderr (each capped at `cap` bytes; the rest is drained and dropped), and kills
/// it with SIGKILL if it has not exited after `timeout`.
pub fn run_with_input(
    cmd: &mut Command,
    input: &[u8],
    timeout: Duration,
    cap: usize,
) -> Result<TimedOutput> {
    let what = format!("{:?}", cmd.get_program());
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().ctx(|| format!("starting {what}"))?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        if let Some(mut s) = stdin {
            // A child that exits without reading its input gives EPIPE: not our problem.
            let _ = s.write_all(&input);
        }
    });
    let out_t = std::thread::spawn(move || read_capped(stdout, cap));
    let err_t = std::thread::spawn(move || read_capped(stderr, cap));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().ctx(|| format!("waiting for {what}"))? {
            Some(s) => break Some(s),
            None if Instant::now() >= deadline => break None,
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let status = match status {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let _ = writer.join();
            let _ = out_t.join();
            let err = err_t.join().unwrap_or_default();
            return Err(Error::Io {
                what: format!(
                    "{what} did not finish within {}s and was killed; its stderr: {}",
                    timeout.as_secs(),
                    String::from_utf8_lossy(&err).trim()
                ),
                cause: std::io::Error::from(std::io::ErrorKind::TimedOut),
            });
        }
    };
    let _ = writer.join();
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Ok(TimedOutput {
        status,
        stdout,
        stderr,
    })
}

fn read_capped(pipe: Option<impl Read>, cap: usize) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(mut p) = pipe {
        let mut buf = [0u8; 8192];
        loop {
            match p.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let room = cap.saturating_sub(out.len());
                    out.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    out
}

/// Stops a child we started: SIGTERM, then SIGKILL after `grace`. Always reaps it.
/// Returns how it ended.
pub fn terminate(child: &mut Child, grace: Duration) -> Result<ExitStatus> {
    if let Some(s) = child.try_wait().ctx(|| "checking a child process".into())? {
        return Ok(s);
    }
    let pid = Pid::from_raw(child.id() as i32);
    // The child is not reaped yet (try_wait said so), so the PID is still ours.
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Some(s) = child
            .try_wait()
            .ctx(|| format!("waiting for process {pid}"))?
        {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ctx(|| format!("reaping process {pid}"))
}

/// Kills a child we started with SIGKILL and reaps it.
pub fn kill9(child: &mut Child) -> Result<ExitStatus> {
    if let Some(s) = child.try_wait().ctx(|| "checking a child process".into())? {
        return Ok(s);
    }
    let _ = child.kill();
    child
        .wait()
        .ctx(|| format!("reaping process {}", child.id()))
}

//! SIGINT/SIGTERM → a flag that the lab polls, so that Ctrl-C tears the lab down cleanly.
use crate::error::Context;
use crate::Result;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// True once SIGINT or SIGTERM arrived while a [`StopGuard`] was installed (or after
/// [`request_stop`]).
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Asks a running lab to stop as if Ctrl-C had been pressed.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Installed SIGINT/SIGTERM handlers; dropping it restores the previous ones.
pub struct StopGuard {
    old_int: SigAction,
    old_term: SigAction,
}

/// Installs handlers for SIGINT and SIGTERM that set the stop flag, and clears the flag.
/// The handlers are one-shot (`SA_RESETHAND`): a second Ctrl-C kills the process the default
/// way, for when a graceful teardown hangs.
pub fn install_stop_handler() -> Result<StopGuard> {
    STOP.store(false, Ordering::SeqCst);
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART | SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    let old_int = unsafe { sigaction(Signal::SIGINT, &act) }
        .ctx(|| "installing the SIGINT handler".into())?;
    let old_term = match unsafe { sigaction(Signal::SIGTERM, &act) } {
        Ok(o) => o,
        Err(e) => {
            // SAFETY: restoring the disposition we just replaced.
            let _ = unsafe { sigaction(Signal::SIGINT, &old_int) };
            return Err(e).ctx(|| "installing the SIGTERM handler".into());
        }
    };
    Ok(StopGuard { old_int, old_term })
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        // SAFETY: restoring dispositions saved by install_stop_handler.
        unsafe {
            let _ = sigaction(Signal::SIGINT, &self.old_int);
            let _ = sigaction(Signal::SIGTERM, &self.old_term);
        }
    }
}

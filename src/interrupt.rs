//! Cancellation points: the code of one SQL call asks `check()` in its long loops, and stops
//! with `Error::interrupted()` once the caller interrupted the call (sqlite3_interrupt: Ctrl-C
//! in the shell, an application's timeout).
//!
//! Plain Rust: how to ask is a probe the SQL layer installs for the length of the call
//! (`ffi::interrupt::Probe` asks the caller's connection). The probe lives in a thread-local,
//! so only the calling thread ever asks; on any other thread (compression workers, part
//! uploads) `check` answers Ok without looking.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How often the probe runs at most: it costs about a microsecond, so this only keeps it off
/// hot loops; an interrupt is seen within this (plus one block of work).
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Answers whether the call was interrupted.
pub trait Probe {
    fn interrupted(&mut self) -> bool;
}

struct Watch {
    probe: Box<dyn Probe>,
    last: Option<Instant>,
    /// An interrupt was seen in this call.
    fired: bool,
}

thread_local! {
    static WATCH: RefCell<Option<Watch>> = const { RefCell::new(None) };
}

/// Watches one call; not Send: it ends on the thread that started it.
pub struct Guard {
    previous: Option<Watch>,
    _thread_bound: PhantomData<*mut ()>,
}

/// Installs `probe` on this thread until the guard is dropped.
pub fn watch(probe: impl Probe + 'static) -> Guard {
    let watch = Watch {
        probe: Box::new(probe),
        last: None,
        fired: false,
    };
    let previous = WATCH.with(|w| w.try_borrow_mut().ok().and_then(|mut w| w.replace(watch)));
    Guard {
        previous,
        _thread_bound: PhantomData,
    }
}

impl Guard {
    /// The call's outcome, with any error replaced by `Error::interrupted()` when an interrupt
    /// was seen: whatever failed then (VACUUM INTO, integrity_check) failed because of it.
    pub fn finish<T>(self, outcome: Result<T>) -> Result<T> {
        let fired = WATCH.with(|w| {
            w.try_borrow()
                .ok()
                .and_then(|w| w.as_ref().map(|w| w.fired))
                .unwrap_or(false)
        });
        match outcome {
            Err(_) if fired => Err(Error::interrupted()),
            other => other,
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Dropping the watch drops its probe here, on the calling thread.
        let ended = WATCH.with(|w| {
            w.try_borrow_mut()
                .ok()
                .map(|mut w| std::mem::replace(&mut *w, self.previous.take()))
        });
        drop(ended);
    }
}

/// `Err(interrupted)` once the call running on this thread was interrupted; cheap enough for
/// any loop (the probe runs at most every `POLL_EVERY`).
pub fn check() -> Result<()> {
    // The places that look for interrupts are the long loops: they redraw progress too.
    crate::progress::tick();
    let interrupted = WATCH.with(|w| match w.try_borrow_mut() {
        Ok(mut w) => w.as_mut().is_some_and(poll),
        Err(_) => false,
    });
    if interrupted {
        Err(Error::interrupted())
    } else {
        Ok(())
    }
}

fn poll(w: &mut Watch) -> bool {
    if w.fired {
        return true;
    }
    let now = Instant::now();
    if w.last
        .is_some_and(|last| now.duration_since(last) < POLL_EVERY)
    {
        return false;
    }
    w.last = Some(now);
    w.fired = w.probe.interrupted();
    w.fired
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    struct Flag(Arc<AtomicBool>);
    impl Probe for Flag {
        fn interrupted(&mut self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn only_the_watching_thread_sees_the_interrupt_and_errors_become_interrupted() {
        let flag = Arc::new(AtomicBool::new(false));
        let guard = watch(Flag(Arc::clone(&flag)));
        assert!(check().is_ok());
        flag.store(true, Ordering::SeqCst);
        std::thread::sleep(POLL_EVERY);
        assert!(std::thread::spawn(check).join().unwrap().is_ok());
        let err = check().unwrap_err();
        assert_eq!(err.kind, crate::error::Kind::Interrupted);
        let other: Result<()> = Err(Error::usage("VACUUM INTO failed: interrupted"));
        assert_eq!(
            guard.finish(other).unwrap_err().kind,
            crate::error::Kind::Interrupted
        );
        assert!(check().is_ok(), "the watch ended with the call");
    }
}

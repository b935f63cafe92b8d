//! A one-line progress indicator on stderr for long calls: the phase, bytes done of the total,
//! the rate and the time left, redrawn in place and cleared when the call ends.
//!
//! Shown by default only where a person is watching: in the `sqlite3` shell with stderr on a
//! terminal, once a call has run for [`AUTO_AFTER`]. Never in cron (no terminal) or inside other
//! applications, unless the call passes `"progress": true` (then from the start, wherever
//! stderr goes); `"progress": false` silences it.
//!
//! Plain Rust. Like `interrupt`, the display belongs to the calling thread for the length of
//! one SQL call (a thread-local), and is redrawn from the same places that look for interrupts
//! ([`tick`]); the bytes it shows are counted by a [`Meter`], which any thread may advance.

use std::cell::RefCell;
use std::io::{IsTerminal, Write};
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a call runs before the indicator appears, when it was not asked for.
pub const AUTO_AFTER: Duration = Duration::from_secs(2);
/// How often the line is redrawn at most.
const REDRAW_EVERY: Duration = Duration::from_millis(200);

/// Bytes done in the current phase; clone it into whatever thread does the work.
#[derive(Clone, Default)]
pub struct Meter(Arc<AtomicU64>);

impl Meter {
    pub fn add(&self, bytes: u64) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

struct Display {
    /// The SQL function, first on the line.
    function: &'static str,
    started: Instant,
    /// When the indicator may appear.
    show_after: Duration,
    last_draw: Option<Instant>,
    drawn: bool,
    phase: &'static str,
    phase_started: Instant,
    total: Option<u64>,
    meter: Meter,
    /// A file whose size is the work done (the snapshot while SQLite writes it).
    watched: Option<PathBuf>,
}

thread_local! {
    static DISPLAY: RefCell<Option<Display>> = const { RefCell::new(None) };
}

/// Shows progress for one call until dropped (which clears the line); not Send.
pub struct Guard {
    active: bool,
    _thread_bound: PhantomData<*mut ()>,
}

/// Whether a call with the `progress` option `setting` shows the indicator, and after how long:
/// `Some(true)` at once, `Some(false)` never, unset in the sqlite3 shell on a terminal only.
fn wanted(setting: Option<bool>) -> Option<Duration> {
    match setting {
        Some(true) => Some(Duration::ZERO),
        Some(false) => None,
        None => (std::io::stderr().is_terminal() && in_sqlite3_shell()).then_some(AUTO_AFTER),
    }
}

/// The host is the sqlite3 command-line shell (`sqlite3`, `sqlite3.exe`, a versioned name).
fn in_sqlite3_shell() -> bool {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .is_some_and(|name| name.starts_with("sqlite3"))
}

/// Starts the indicator for a call of `function`, as its `progress` option says.
pub fn show(function: &'static str, setting: Option<bool>) -> Guard {
    let Some(show_after) = wanted(setting) else {
        return Guard {
            active: false,
            _thread_bound: PhantomData,
        };
    };
    let now = Instant::now();
    let display = Display {
        function,
        started: now,
        show_after,
        last_draw: None,
        drawn: false,
        phase: "starting",
        phase_started: now,
        total: None,
        meter: Meter::default(),
        watched: None,
    };
    let active = DISPLAY.with(|d| match d.try_borrow_mut() {
        // A call inside a call (none today) keeps the outer line.
        Ok(mut d) if d.is_none() => {
            *d = Some(display);
            true
        }
        _ => false,
    });
    Guard {
        active,
        _thread_bound: PhantomData,
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        let ended = DISPLAY.with(|d| d.try_borrow_mut().ok().and_then(|mut d| d.take()));
        if ended.is_some_and(|d| d.drawn) {
            // Clear the line: the result follows on a clean one.
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(b"\r\x1b[K");
            let _ = err.flush();
        }
    }
}

/// Starts a phase of `total` bytes (None: unknown); returns the meter to count them with.
pub fn phase(name: &'static str, total: Option<u64>) -> Meter {
    start(name, total, None)
}

/// Starts a phase whose work done is the size of the file at `path`.
pub fn phase_file(name: &'static str, total: Option<u64>, path: PathBuf) -> Meter {
    start(name, total, Some(path))
}

fn start(name: &'static str, total: Option<u64>, watched: Option<PathBuf>) -> Meter {
    let meter = Meter::default();
    DISPLAY.with(|d| {
        if let Ok(mut d) = d.try_borrow_mut() {
            if let Some(d) = d.as_mut() {
                d.phase = name;
                d.phase_started = Instant::now();
                d.total = total;
                d.meter = meter.clone();
                d.watched = watched;
            }
        }
    });
    tick();
    meter
}

/// Redraws the line when it is due; called from the calling thread's long loops.
pub fn tick() {
    DISPLAY.with(|d| {
        let Ok(mut d) = d.try_borrow_mut() else {
            return;
        };
        let Some(d) = d.as_mut() else { return };
        let now = Instant::now();
        if now.duration_since(d.started) < d.show_after
            || d.last_draw
                .is_some_and(|t| now.duration_since(t) < REDRAW_EVERY)
        {
            return;
        }
        d.last_draw = Some(now);
        let done = match &d.watched {
            Some(path) => std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            None => d.meter.get(),
        };
        let line = render(
            d.function,
            d.phase,
            done,
            d.total,
            now.duration_since(d.phase_started),
        );
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{line}");
        let _ = err.flush();
        d.drawn = true;
    });
}

/// `backup_to_file: compressing 1.2 GiB of 3.4 GiB (35%), 410 MiB/s, 6 s left`.
pub fn render(
    function: &str,
    phase: &str,
    done: u64,
    total: Option<u64>,
    elapsed: Duration,
) -> String {
    let mut line = format!("{function}: {phase}");
    if done == 0 && total.is_none() {
        line.push_str(&format!(", {} s", elapsed.as_secs()));
        return line;
    }
    line.push_str(&format!(" {}", size(done)));
    let secs = elapsed.as_secs_f64();
    let rate = (secs > 0.0).then(|| done as f64 / secs);
    if let Some(total) = total.filter(|&t| t > 0) {
        let done = done.min(total);
        line.push_str(&format!(
            " of {} ({}%)",
            size(total),
            done.saturating_mul(100) / total
        ));
        if let Some(rate) = rate.filter(|&r| r >= 1.0) {
            let left = (total - done) as f64 / rate;
            line.push_str(&format!(", {}/s, {} left", size(rate as u64), eta(left)));
            return line;
        }
    }
    if let Some(rate) = rate.filter(|&r| r >= 1.0) {
        line.push_str(&format!(", {}/s", size(rate as u64)));
    }
    line
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn eta(seconds: f64) -> String {
    let s = seconds.ceil() as u64;
    match s {
        0..=99 => format!("{s} s"),
        100..=5999 => format!("{} min", s.div_ceil(60)),
        _ => format!("{} h", s.div_ceil(3600)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_phase_bytes_rate_and_time_left() {
        let gib = 1u64 << 30;
        assert_eq!(
            render(
                "backup_to_file",
                "compressing",
                gib,
                Some(4 * gib),
                Duration::from_secs(2)
            ),
            "backup_to_file: compressing 1.0 GiB of 4.0 GiB (25%), 512.0 MiB/s, 6 s left"
        );
        assert_eq!(
            render(
                "verify_backup",
                "checking integrity",
                0,
                None,
                Duration::from_millis(3500)
            ),
            "verify_backup: checking integrity, 3 s"
        );
        assert_eq!(
            render(
                "restore_backup",
                "reading",
                512,
                None,
                Duration::from_secs(1)
            ),
            "restore_backup: reading 512 B, 512 B/s"
        );
        // More than the total (a growing estimate) never shows over 100%.
        assert!(render("f", "p", 300, Some(200), Duration::from_secs(1)).contains("(100%)"));
        assert_eq!(eta(7200.0), "2 h");
        assert_eq!(eta(150.0), "3 min");
    }

    #[test]
    fn nothing_is_drawn_when_not_asked_or_outside_a_call() {
        assert_eq!(wanted(Some(false)), None);
        assert_eq!(wanted(Some(true)), Some(Duration::ZERO));
        // The test binary is not the sqlite3 shell.
        assert_eq!(wanted(None), None);
        tick(); // no display installed: nothing happens
        let meter = phase("reading", Some(10));
        meter.add(5);
        let guard = show("f", Some(false));
        assert!(!guard.active);
    }
}

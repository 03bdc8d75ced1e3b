//! Waiting for a condition with a deadline and a short poll, saying what was last seen.

use std::time::{Duration, Instant};

/// How often conditions are checked.
const POLL: Duration = Duration::from_millis(50);

/// Waits until `check` returns `Ok(value)` and returns that value. `check` returns `Err(seen)`
/// while the condition does not hold; when `timeout` passes, panics with `what` and the last
/// `seen`.
pub fn poll_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(seen) => {
                if Instant::now() >= deadline {
                    panic!("timed out after {timeout:?} waiting for {what}; last seen: {seen}");
                }
            }
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until `check` returns true; panics after `timeout` naming `what` was awaited.
pub fn poll_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    poll_for(timeout, what, || {
        if check() {
            Ok(())
        } else {
            Err("condition false".to_string())
        }
    })
}

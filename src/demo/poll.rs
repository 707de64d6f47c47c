//! Waiting for a condition by polling it against a deadline, so callers
//! never guess with a fixed sleep and always get a clear timeout error.

use std::thread;
use std::time::{Duration, Instant};

use super::error::{ClusterError, Result};

/// Calls `check` until it returns `Some`, an error, or `timeout` passes.
/// The interval starts small (most conditions come true within
/// milliseconds) and backs off to 100 ms so slow ones cost little CPU.
pub(crate) fn poll_until<T>(
    what: impl FnOnce() -> String,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    let mut interval = Duration::from_millis(5);
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(ClusterError::Timeout {
                what: what(),
                waited,
            });
        }
        thread::sleep(interval.min(timeout - waited));
        interval = (interval * 2).min(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_ready_value() {
        let mut n = 0;
        let got = poll_until(String::new, Duration::from_secs(5), || {
            n += 1;
            Ok((n == 3).then_some(n))
        });
        assert_eq!(got.unwrap(), 3);
    }

    #[test]
    fn times_out_with_the_condition_named() {
        let err = poll_until(
            || "godot".to_string(),
            Duration::from_millis(20),
            || Ok(None::<()>),
        )
        .unwrap_err();
        assert!(err.to_string().contains("waiting for godot"), "{err}");
    }
}

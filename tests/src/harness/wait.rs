//! Polling until a condition holds, with a deadline.
use std::{
    future::Future,
    time::{Duration, Instant},
};

/// Polls `f` every `every` until it returns `Some`; panics, naming `what`, after `timeout`.
pub async fn poll<T, F, Fut>(timeout: Duration, every: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {} s waiting for {what}",
            timeout.as_secs_f64()
        );
        tokio::time::sleep(every).await;
    }
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll(
        Duration::from_secs(secs),
        Duration::from_millis(50),
        what,
        f,
    )
    .await
}

/// Blocking form: polls `f` every 100 ms until it returns true, for at most `secs`.
pub fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

//! The one polling loop of the tests.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

/// How often `eventually` looks again.
pub const POLL_EVERY: Duration = Duration::from_millis(10);

/// Asks `probe` every `POLL_EVERY` until it answers `Ok`, and answers that. After
/// `within`, fails the test with `what` and the probe's last `Err`: the state it saw.
pub async fn eventually<T, E: Debug, Fut>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> Fut,
) -> T
where
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + within;
    loop {
        match probe().await {
            Ok(done) => return done,
            Err(seen) if Instant::now() >= deadline => {
                panic!("{what} did not happen within {within:?}; last seen: {seen:?}")
            }
            Err(_) => tokio::time::sleep(POLL_EVERY).await,
        }
    }
}

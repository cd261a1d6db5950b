//! Password hashing (argon2id) on a bounded pool of threads of its own.
//!
//! Each hash takes about 19 MiB of memory and tens of milliseconds of a core. Run on an
//! unbounded blocking pool, a registration flood ran hundreds at once and the allocator
//! kept the freed blocks (RSS at 7 GiB and staying there). Here a fixed set of threads
//! (`auth.max_concurrent_hashes`) does every hash, each reusing one memory block it
//! allocates once, so hashing memory is threads × 19 MiB whatever the load; a short line
//! (`auth.max_queued_hashes`) waits for them, and a request beyond it is refused at once
//! (`HashError::Busy`, a 503 with Retry-After) instead of queueing without bound. A
//! thread idle for `RELEASE_AFTER` frees its block (a block that size is its own mapping,
//! so the memory goes back to the system), and allocates it again with its next hash.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use argon2::password_hash::{
    rand_core::OsRng, Output, ParamsString, PasswordHash, Salt, SaltString,
};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::oneshot;

/// Why a password could not be hashed or checked.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every hashing thread is busy and the line behind them is full.
    #[error("too many passwords are being hashed; retry shortly")]
    Busy,
    /// The hashing threads are gone (the pool was shut down).
    #[error("the password hashing threads stopped")]
    Stopped,
    /// argon2 refused its input or parameters.
    #[error("cannot hash password: {0}")]
    Argon(String),
}

impl From<argon2::password_hash::Error> for HashError {
    fn from(e: argon2::password_hash::Error) -> Self {
        HashError::Argon(e.to_string())
    }
}

/// A hashing thread's own state: the argon2 memory it reuses from one hash to the next.
#[derive(Default)]
pub struct Memory {
    blocks: Vec<Block>,
}

type Job = Box<dyn FnOnce(&mut Memory) + Send>;

/// A hashing thread with no work for this long frees its memory block.
const RELEASE_AFTER: Duration = Duration::from_secs(10);

/// The hashing threads and the bounded line in front of them. Dropping the pool lets the
/// threads finish the line and exit.
pub struct HashPool {
    /// Every thread takes from it (a multi-consumer channel, so each can time out idle).
    jobs: Sender<Job>,
    threads: usize,
    /// Most jobs handed in and not finished (running or waiting): threads + line.
    max_pending: usize,
    /// Jobs handed in and not finished yet; each job's `Slot` gives its place back when
    /// it has run, or when it is dropped unrun.
    pending: Arc<AtomicUsize>,
}

/// A job's place among the pending ones.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl HashPool {
    /// `threads` hashing threads (0: one per core) behind a line of `max_queued`.
    pub fn new(threads: usize, max_queued: usize) -> HashPool {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let max_pending = threads + max_queued;
        // Admission is counted in `pending`, so the channel never holds more than this.
        let (jobs, line) = crossbeam_channel::bounded::<Job>(max_pending);
        for i in 0..threads {
            let line = line.clone();
            std::thread::Builder::new()
                .name(format!("password-hash-{i}"))
                .spawn(move || hashing_thread(&line))
                .expect("start a password hashing thread");
        }
        HashPool {
            jobs,
            threads,
            max_pending,
            pending: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Hashes and checks handed in and not finished yet.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// An argon2id PHC string for `password`, with a fresh salt.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        self.run(move |memory| hash_with(memory, &password)).await?
    }

    /// Whether `password` matches the stored hash. With none (an unknown user) the same
    /// work is done against a dummy hash, so the time taken does not tell which usernames
    /// exist.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, HashError> {
        self.run(move |memory| verify_with(memory, &password, stored.as_deref()))
            .await
    }

    /// Hands `work` to a hashing thread now, or refuses at once when every thread is busy
    /// and the line is full; the future answers when it has run.
    pub fn run<T, F>(&self, work: F) -> impl Future<Output = Result<T, HashError>> + 'static
    where
        T: Send + 'static,
        F: FnOnce(&mut Memory) -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let admitted = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_pending).then_some(n + 1)
            })
            .is_ok();
        let refused = if admitted {
            let slot = Slot(self.pending.clone());
            let job: Job = Box::new(move |memory| {
                let answer = work(memory);
                drop(slot);
                let _ = tx.send(answer);
            });
            match self.jobs.try_send(job) {
                Ok(()) => None,
                // Dropping the job gave its slot back.
                Err(TrySendError::Full(_)) => Some(HashError::Busy),
                Err(TrySendError::Disconnected(_)) => Some(HashError::Stopped),
            }
        } else {
            Some(HashError::Busy)
        };
        async move {
            match refused {
                Some(error) => Err(error),
                None => rx.await.map_err(|_| HashError::Stopped),
            }
        }
    }
}

/// Takes jobs off the line until the pool is dropped. A job that panics loses only its
/// own answer (its caller sees `Stopped`); the thread and its memory carry on.
fn hashing_thread(line: &Receiver<Job>) {
    let mut memory = Memory::default();
    loop {
        match line.recv_timeout(RELEASE_AFTER) {
            Ok(job) => {
                if std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut memory))).is_err() {
                    tracing::error!("a password hashing job panicked");
                }
            }
            Err(RecvTimeoutError::Timeout) => memory.blocks = Vec::new(),
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// argon2id with the crate's recommended parameters (19 MiB, 2 passes, 1 lane).
fn hash_with(memory: &mut Memory, password: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    let argon = Argon2::default();
    let hash = compute(
        &argon,
        memory,
        password.as_bytes(),
        salt.as_salt(),
        Params::DEFAULT_OUTPUT_LEN,
    )?;
    Ok(hash.to_string())
}

fn verify_with(memory: &mut Memory, password: &str, stored: Option<&str>) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash_with(memory, "dummy password").unwrap_or_default());
    let Ok(expected) = PasswordHash::new(stored.unwrap_or(dummy)) else {
        return false;
    };
    let (Some(salt), Some(output)) = (expected.salt, expected.hash) else {
        return false;
    };
    let argon = match (
        Algorithm::try_from(expected.algorithm),
        expected
            .version
            .map_or(Ok(Version::default()), Version::try_from),
        Params::try_from(&expected),
    ) {
        (Ok(algorithm), Ok(version), Ok(params)) => Argon2::new(algorithm, version, params),
        _ => return false,
    };
    let computed = compute(&argon, memory, password.as_bytes(), salt, output.len());
    // `Output`'s equality is constant-time.
    let matches = computed.is_ok_and(|hash| hash.hash == Some(output));
    matches && stored.is_some()
}

/// The PHC hash of `password` under `argon`'s parameters, computed in the thread's own
/// memory (grown once to what the parameters need, then reused).
fn compute<'a>(
    argon: &Argon2<'_>,
    memory: &mut Memory,
    password: &[u8],
    salt: Salt<'a>,
    output_len: usize,
) -> Result<PasswordHash<'a>, HashError> {
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf)?;
    let blocks = argon.params().block_count();
    if memory.blocks.len() < blocks {
        memory.blocks.resize(blocks, Block::default());
    }
    let output = Output::init_with(output_len, |out| {
        argon
            .hash_password_into_with_memory(password, salt_bytes, out, &mut memory.blocks[..])
            .map_err(argon2::password_hash::Error::from)
    })?;
    Ok(PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon.params())?,
        salt: Some(salt),
        hash: Some(output),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn verifies_only_the_right_password() {
        let pool = HashPool::new(1, 4);
        let hash = pool.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        let verify = |password: &str, stored: Option<&str>| {
            pool.verify(password.into(), stored.map(String::from))
        };
        assert!(verify("correct horse", Some(&hash)).await.unwrap());
        assert!(!verify("wrong horse", Some(&hash)).await.unwrap());
        assert!(!verify("dummy password", None).await.unwrap());
        assert!(!verify("x", Some("not a hash")).await.unwrap());
    }

    #[actix_web::test]
    async fn hashes_from_the_argon2_crate_itself_verify() {
        use argon2::password_hash::PasswordHasher;
        let salt = SaltString::generate(&mut OsRng);
        let theirs = Argon2::default()
            .hash_password(b"old password", &salt)
            .unwrap()
            .to_string();
        let pool = HashPool::new(1, 0);
        assert!(pool
            .verify("old password".into(), Some(theirs))
            .await
            .unwrap());
    }

    #[actix_web::test]
    async fn beyond_the_threads_and_the_line_a_hash_is_refused_at_once() {
        let pool = HashPool::new(1, 1);
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = oneshot::channel::<()>();
        // Occupy the only thread until told to go on.
        let busy = pool.run(move |_| {
            let _ = started_tx.send(());
            let _ = hold.recv();
        });
        started.await.unwrap();
        // One waits in the line; the next is refused.
        let queued = pool.run(|_| 7);
        let refused = pool.run(|_| 8);
        assert!(matches!(refused.await, Err(HashError::Busy)));
        release.send(()).unwrap();
        assert_eq!(queued.await.unwrap(), 7);
        busy.await.unwrap();
        // Room again once the line has drained.
        assert_eq!(pool.run(|_| 9).await.unwrap(), 9);
        assert_eq!(pool.pending(), 0);
    }
}

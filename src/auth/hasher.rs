//! argon2id verification on a fixed pool: `hash_workers` threads, each owning one memory
//! block buffer that it reuses for every check (argon2 hashes into caller-provided
//! memory), fed by a bounded queue of `hash_queue` jobs. A job that finds the queue full,
//! or waits in it longer than the queue deadline, is answered `Overloaded` (503 with
//! `Retry-After`, reason `overloaded`) without running. Peak memory for password checks is
//! therefore `hash_workers × m_cost` (19 MiB each with the default parameters), whatever
//! the flood. During a burst each worker reuses its buffer; when the queue is empty it
//! gives the buffer back, so an idle or cache-served gateway does not keep 19 MiB per
//! worker resident (`main` makes glibc return such blocks to the system).

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use prometheus::{IntCounter, IntGauge};
use subtle::ConstantTimeEq;

/// Why a password was not checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// The queue was full or the job waited past the deadline.
    Overloaded,
}

/// The pool's shape, from `[auth]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub workers: usize,
    pub queue: usize,
    pub deadline: Duration,
}

struct Job {
    hash: String,
    /// Wiped when the job is dropped.
    password: zeroize::Zeroizing<Vec<u8>>,
    enqueued: Instant,
    reply: tokio::sync::oneshot::Sender<Result<bool, Busy>>,
}

/// The pool. Dropping the last handle ends the workers once the queue drains.
pub struct Hasher {
    shape: Shape,
    queue: SyncSender<Job>,
    /// Held here too, so the queue stays open whatever the workers do.
    _jobs: Arc<Mutex<Receiver<Job>>>,
    waiting: Arc<IntGauge>,
    overloaded: IntCounter,
}

impl Hasher {
    pub fn new(shape: Shape, waiting: IntGauge, overloaded: IntCounter) -> Self {
        Self::with_workers(shape, shape.workers.max(1), waiting, overloaded)
    }

    fn with_workers(shape: Shape, workers: usize, waiting: IntGauge, overloaded: IntCounter) -> Self {
        let (tx, rx) = sync_channel::<Job>(shape.queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let waiting = Arc::new(waiting);
        for i in 0..workers {
            let rx = rx.clone();
            let waiting = waiting.clone();
            let overloaded = overloaded.clone();
            let deadline = shape.deadline;
            let spawned = std::thread::Builder::new()
                .name(format!("portcullis-argon2-{i}"))
                .spawn(move || work(&rx, &waiting, &overloaded, deadline));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start an argon2 worker");
            }
        }
        Hasher {
            shape,
            queue: tx,
            _jobs: rx,
            waiting,
            overloaded,
        }
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Verifies `password` against the PHC string `hash` on the pool. `Ok(false)` for a
    /// wrong password or a hash that cannot be used.
    pub async fn verify(&self, hash: String, password: &str) -> Result<bool, Busy> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            hash,
            password: zeroize::Zeroizing::new(password.as_bytes().to_vec()),
            enqueued: Instant::now(),
            reply,
        };
        match self.queue.try_send(job) {
            Ok(()) => self.waiting.inc(),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.overloaded.inc();
                return Err(Busy::Overloaded);
            }
        }
        // A worker always replies; a vanished one (a panic) counts as overload.
        answer.await.unwrap_or(Err(Busy::Overloaded))
    }
}

fn work(rx: &Mutex<Receiver<Job>>, waiting: &IntGauge, overloaded: &IntCounter, deadline: Duration) {
    // One buffer per worker, grown to the largest m_cost seen and reused while jobs wait.
    let mut blocks: Vec<Block> = Vec::new();
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        waiting.dec();
        if job.reply.is_closed() {
            // The client went away while queued: nothing to check.
            continue;
        }
        if job.enqueued.elapsed() >= deadline {
            overloaded.inc();
            let _ = job.reply.send(Err(Busy::Overloaded));
            continue;
        }
        let ok = verify_into(&job.hash, &job.password, &mut blocks);
        let _ = job.reply.send(Ok(ok));
        if waiting.get() <= 0 {
            blocks = Vec::new();
        }
    }
}

/// The largest `m_cost` (KiB) a stored hash may ask for: one check never needs more.
const MAX_M_COST: u32 = 256 * 1024;

/// argon2 verification of a PHC string into `blocks`, comparing in constant time.
fn verify_into(phc: &str, password: &[u8], blocks: &mut Vec<Block>) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else { return false };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm) else {
        return false;
    };
    let version = match hash.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(&hash) else {
        return false;
    };
    if params.m_cost() > MAX_M_COST {
        return false;
    }
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let need = params.block_count();
    if blocks.len() < need {
        blocks.resize(need, Block::default());
    }
    let mut out = [0u8; 64];
    let expected = expected.as_bytes();
    if expected.len() > out.len() {
        return false;
    }
    let out = &mut out[..expected.len()];
    let argon = Argon2::new(algorithm, version, params);
    if argon
        .hash_password_into_with_memory(password, salt, out, &mut blocks[..need])
        .is_err()
    {
        return false;
    }
    out.ct_eq(expected).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher(workers: usize, queue: usize) -> Hasher {
        Hasher::new(
            Shape {
                workers,
                queue,
                deadline: Duration::from_secs(60),
            },
            IntGauge::new("w", "w").unwrap(),
            IntCounter::new("o", "o").unwrap(),
        )
    }

    #[tokio::test]
    async fn verifies_like_the_argon2_crate() {
        let h = hasher(1, 4);
        let phc = crate::auth::basic::hash_password("pw").unwrap();
        assert_eq!(h.verify(phc.clone(), "pw").await, Ok(true));
        assert_eq!(h.verify(phc.clone(), "px").await, Ok(false));
        assert_eq!(h.verify("not a hash".into(), "pw").await, Ok(false));
        // argon2i and other parameters too.
        use argon2::password_hash::{PasswordHasher, SaltString};
        let other = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            Params::new(4096, 3, 1, Some(24)).unwrap(),
        )
        .hash_password(b"pw", &SaltString::from_b64("c29tZXNhbHRzb21lc2FsdA").unwrap())
        .unwrap()
        .to_string();
        assert_eq!(h.verify(other.clone(), "pw").await, Ok(true));
        assert_eq!(h.verify(other, "pw2").await, Ok(false));
    }

    #[tokio::test]
    async fn a_full_queue_is_overloaded_not_unbounded() {
        // No worker takes jobs: the queue (2) fills, and the next job is refused at once.
        let shape = Shape {
            workers: 1,
            queue: 2,
            deadline: Duration::from_secs(60),
        };
        let h = Arc::new(Hasher::with_workers(
            shape,
            0,
            IntGauge::new("w", "w").unwrap(),
            IntCounter::new("o", "o").unwrap(),
        ));
        let queued: Vec<_> = (0..2)
            .map(|_| {
                let h = h.clone();
                tokio::spawn(async move { h.verify("x".into(), "pw").await })
            })
            .collect();
        while h.waiting.get() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(h.verify("x".into(), "pw").await, Err(Busy::Overloaded));
        assert_eq!(h.overloaded.get(), 1);
        for q in queued {
            q.abort();
        }
    }

    #[tokio::test]
    async fn a_job_past_the_queue_deadline_is_not_run() {
        let h = Hasher::new(
            Shape {
                workers: 1,
                queue: 4,
                deadline: Duration::ZERO,
            },
            IntGauge::new("w", "w").unwrap(),
            IntCounter::new("o", "o").unwrap(),
        );
        let phc = crate::auth::basic::hash_password("pw").unwrap();
        assert_eq!(h.verify(phc, "pw").await, Err(Busy::Overloaded));
    }
}

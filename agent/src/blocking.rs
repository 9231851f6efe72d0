//! Blocking work that demands ask for — a backfill's or one-off read's planning and file reads,
//! a pod's cgroup sample, parsing a large scrape — runs at most [`PERMITS`] at a time, agent
//! wide, on a fixed pool of [`PERMITS`] threads. A storm of demands then waits its turn (and a
//! cancelled one leaves the queue without doing anything) instead of growing the blocking pool
//! by a thread per demand and starving the followers of CPU. Followers, and the planning of a
//! live demand (one per followed stream), do not queue here.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{Semaphore, SemaphorePermit};

/// Demands' blocking jobs allowed at once, and threads that run them.
pub const PERMITS: usize = 2;

static LIMIT: Semaphore = Semaphore::const_new(PERMITS);

type Job = Box<dyn FnOnce() + Send>;

static POOL: OnceLock<SyncSender<Job>> = OnceLock::new();

/// A blocking job that panicked (its demand fails; the pool goes on).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("a blocking job panicked")]
pub struct Panicked;

/// Waits for a turn (first come, first served); blocking work may run while the permit is held.
pub async fn permit() -> SemaphorePermit<'static> {
    LIMIT.acquire().await.expect("the limit is never closed")
}

/// The pool's queue: at most [`PERMITS`] jobs are admitted at once (each holds a permit until
/// it has run), so sending never waits.
fn pool() -> &'static SyncSender<Job> {
    POOL.get_or_init(|| {
        let (tx, rx) = sync_channel::<Job>(PERMITS);
        let rx: Arc<Mutex<Receiver<Job>>> = Arc::new(Mutex::new(rx));
        for i in 0..PERMITS {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("logrelay-blocking-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })
                .expect("start a blocking worker thread");
        }
        tx
    })
}

/// Runs `f` on the pool when its turn comes.
pub async fn run<T, F>(f: F) -> Result<T, Panicked>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let turn = permit().await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(result);
        // The turn ends when the job has run, even if its caller gave up waiting.
        drop(turn);
    });
    pool().send(job).map_err(|_| Panicked)?;
    rx.await.map_err(|_| Panicked)?.map_err(|_| Panicked)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_the_permits_run_at_once() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let jobs: Vec<_> = (0..32)
            .map(|_| {
                let (running, most) = (running.clone(), most.clone());
                tokio::spawn(super::run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    running.fetch_sub(1, Ordering::SeqCst);
                }))
            })
            .collect();
        for j in jobs {
            j.await.unwrap().unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= super::PERMITS);
        let names = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|n| n.starts_with("logrelay-blocki"))
            })
            .count();
        assert_eq!(names, super::PERMITS, "a fixed pool of threads");
    }
}

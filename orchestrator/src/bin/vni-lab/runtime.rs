//! The async runtime the commands run on (one thread: their work is
//! waiting on guests), and Ctrl-C as a stream of its own, so that a long
//! command can end its work in order instead of dying.

use anyhow::Context;
use tokio::runtime::Runtime;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// A current-thread runtime with I/O and time.
pub fn runtime() -> anyhow::Result<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// [`runtime`], and SIGINT caught on it from now on (each Ctrl-C one
/// `recv` of the stream).
pub fn with_interrupt() -> anyhow::Result<(Runtime, Signal)> {
    let runtime = runtime()?;
    let interrupt = runtime
        .block_on(async { signal(SignalKind::interrupt()) })
        .context("cannot catch SIGINT")?;
    Ok((runtime, interrupt))
}

//! Log lines go to stderr from a thread of their own.
//!
//! Writing each request's line to stderr directly is one `write` system call per
//! request on a tokio worker: at 20,000 requests/s that was a quarter of the server's
//! throughput. Here a line is formatted on the worker, handed over through a bounded
//! channel, and the log thread writes whatever has queued in one go. Nothing is
//! dropped: when the channel is full the worker waits (back-pressure, as a slow stderr
//! would make it wait anyway). [`LogGuard::flush`] drains it before the process exits.

use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Lines waiting for the log thread, at most.
const QUEUE: usize = 16_384;

/// How long the log thread waits between batches while lines keep coming.
const NAP: Duration = Duration::from_millis(2);

enum Message {
    Line(Vec<u8>),
    /// Answered once every line before it is written.
    Flush(SyncSender<()>),
}

/// The `MakeWriter` of the subscriber: each event's writer collects its line.
#[derive(Clone)]
pub struct BackgroundStderr {
    tx: SyncSender<Message>,
}

/// Drains the queue: call before the process prints its last words or exits.
pub struct LogGuard {
    tx: SyncSender<Message>,
}

pub fn start() -> (BackgroundStderr, LogGuard) {
    let (tx, rx) = sync_channel(QUEUE);
    // If the thread cannot start, the lines are written by the caller (see `Line`).
    let started = std::thread::Builder::new()
        .name("valet-log".into())
        .spawn(move || write_lines(rx))
        .is_ok();
    if !started {
        eprintln!("warning: no log thread; logging directly");
    }
    (BackgroundStderr { tx: tx.clone() }, LogGuard { tx })
}

fn write_lines(rx: Receiver<Message>) {
    // Stderr itself, not a lock held for good: `eprintln!` elsewhere must not block.
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
    let mut waiting = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        loop {
            let mut wrote = false;
            while let Some(message) = next {
                match message {
                    Message::Line(line) => {
                        let _ = out.write_all(&line);
                        wrote = true;
                    }
                    Message::Flush(done) => waiting.push(done),
                }
                next = rx.try_recv().ok();
            }
            let _ = out.flush();
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
            if !wrote {
                break;
            }
            // Busy: nap instead of parking, so that loggers find nobody to wake (a
            // wake-up per line costs about what the write did). Lines wait 2 ms at most.
            std::thread::sleep(NAP);
            next = rx.try_recv().ok();
        }
    }
}

impl LogGuard {
    /// Waits (a second at most) until every line logged so far is on stderr.
    pub fn flush(&self) {
        let (done, written) = sync_channel(1);
        if self.tx.send(Message::Flush(done)).is_ok() {
            let _ = written.recv_timeout(Duration::from_secs(1));
        }
    }
}

/// One event's line, sent to the log thread when the formatter is done with it.
pub struct Line {
    tx: SyncSender<Message>,
    buf: Vec<u8>,
}

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.buf);
        if let Err(std::sync::mpsc::SendError(Message::Line(line))) =
            self.tx.send(Message::Line(line))
        {
            // The log thread is gone: write it here rather than lose it.
            let _ = std::io::stderr().write_all(&line);
        }
    }
}

impl<'a> MakeWriter<'a> for BackgroundStderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            tx: self.tx.clone(),
            buf: Vec::with_capacity(256),
        }
    }
}

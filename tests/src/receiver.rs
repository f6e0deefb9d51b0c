//! A client's back-channel logout endpoint for tests and benchmarks: records every logout
//! token POSTed to it (with when it arrived) and answers from a script of statuses.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;

/// A free loopback port (bound and released: a test then listens on it or keeps it dark).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Records every logout token POSTed to `/logout`; answers from a script of statuses
/// (200 once the script is used up), after an optional hold of the next request.
#[derive(Clone, Default)]
pub struct Receiver(Arc<Inner>);

#[derive(Default)]
struct Inner {
    /// Tokens whose request was answered 2xx, with when they arrived.
    accepted: Mutex<Vec<(String, Instant)>>,
    /// How many requests came, answered or not.
    seen: Mutex<usize>,
    answers: Mutex<VecDeque<u16>>,
    hold: Mutex<Option<Duration>>,
}

/// `logout_token=<JWT>`: a JWT's characters need no form decoding.
async fn receive(State(r): State<Receiver>, body: String) -> StatusCode {
    let arrived = Instant::now();
    let Some(token) = body.strip_prefix("logout_token=").map(str::to_owned) else {
        return StatusCode::BAD_REQUEST;
    };
    *r.0.seen.lock().expect("receiver") += 1;
    let hold = r.0.hold.lock().expect("receiver").take();
    if let Some(hold) = hold {
        tokio::time::sleep(hold).await;
    }
    let status =
        r.0.answers
            .lock()
            .expect("receiver")
            .pop_front()
            .unwrap_or(200);
    if (200..300).contains(&status) {
        r.0.accepted
            .lock()
            .expect("receiver")
            .push((token, arrived));
    }
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl Receiver {
    /// Serves on `port` until the handle is aborted.
    pub async fn serve(&self, port: u16) -> tokio::task::JoinHandle<()> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the receiver");
        let app = axum::Router::new()
            .route("/logout", post(receive))
            .with_state(self.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        })
    }

    /// The next requests are answered with these statuses, in order.
    pub fn answer(&self, statuses: &[u16]) {
        self.0.answers.lock().expect("receiver").extend(statuses);
    }

    /// The next request waits `delay` before it is answered.
    pub fn hold_next(&self, delay: Duration) {
        *self.0.hold.lock().expect("receiver") = Some(delay);
    }

    pub fn accepted(&self) -> Vec<String> {
        self.accepted_at().into_iter().map(|(t, _)| t).collect()
    }

    pub fn accepted_at(&self) -> Vec<(String, Instant)> {
        self.0.accepted.lock().expect("receiver").clone()
    }

    pub fn seen(&self) -> usize {
        *self.0.seen.lock().expect("receiver")
    }

    /// Waits until `n` tokens were accepted.
    pub async fn until_accepted(&self, n: usize, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let accepted = self.accepted();
            if accepted.len() >= n {
                return accepted;
            }
            assert!(
                Instant::now() < deadline,
                "{} logout token(s) accepted within {within:?}, wanted {n}",
                accepted.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

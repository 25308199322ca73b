//! What a router counts for its operator, served as Prometheus text on
//! `GET /metrics`: sessions, frames in and out, queue depth, the latency
//! of queue commits and the errors sent, by code. Hand-written: a dozen
//! atomics do not need a metrics crate.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::protocol::ErrorCode;

/// Upper bounds of the commit latency histogram's buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Every error code a router sends, in the order they are exposed.
const CODES: [ErrorCode; ErrorCode::ALL.len()] = ErrorCode::ALL;

/// The router's counters; shared by every connection.
#[derive(Debug, Default)]
pub struct Metrics {
    sessions_total: AtomicU64,
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    errors: [AtomicU64; CODES.len()],
    commit_buckets: [AtomicU64; BUCKETS.len()],
    commit_count: AtomicU64,
    commit_micros: AtomicU64,
}

/// Values read at scrape time rather than counted.
#[derive(Debug, Clone, Copy)]
pub struct Gauges {
    /// Authenticated sessions now.
    pub sessions: usize,
    /// Frames in the queue, if the queue could be asked.
    pub queue_depth: Option<u64>,
    /// Whether the queue is reachable ([`super::backend::Backend::health`]).
    pub queue_up: bool,
}

impl Metrics {
    /// A session authenticated.
    pub fn session_started(&self) {
        self.sessions_total.fetch_add(1, Relaxed);
    }

    /// A WebSocket message arrived from an authenticated client.
    pub fn frame_in(&self) {
        self.frames_in.fetch_add(1, Relaxed);
    }

    /// A frame was written to a client.
    pub fn frame_out(&self) {
        self.frames_out.fetch_add(1, Relaxed);
    }

    /// An error frame with `code` was sent.
    pub fn error(&self, code: ErrorCode) {
        if let Some(i) = CODES.iter().position(|c| *c == code) {
            self.errors[i].fetch_add(1, Relaxed);
        }
    }

    /// A submission to the queue was committed (or refused) after `took`.
    pub fn commit(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.commit_buckets[i].fetch_add(1, Relaxed);
        }
        self.commit_count.fetch_add(1, Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.commit_micros.fetch_add(micros, Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric.
    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in lines {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let plain = |v: u64| vec![(String::new(), v.to_string())];
        metric(
            "chat_router_sessions",
            "gauge",
            "Authenticated sessions open now.",
            &plain(gauges.sessions as u64),
        );
        metric(
            "chat_router_sessions_total",
            "counter",
            "Sessions authenticated since the router started.",
            &plain(self.sessions_total.load(Relaxed)),
        );
        metric(
            "chat_router_frames_in_total",
            "counter",
            "WebSocket messages received from authenticated clients.",
            &plain(self.frames_in.load(Relaxed)),
        );
        metric(
            "chat_router_frames_out_total",
            "counter",
            "Frames written to clients.",
            &plain(self.frames_out.load(Relaxed)),
        );
        metric(
            "chat_router_queue_up",
            "gauge",
            "1 when the router's queue is reachable, 0 while it is not (sessions are then refused).",
            &plain(u64::from(gauges.queue_up)),
        );
        if let Some(depth) = gauges.queue_depth {
            metric(
                "chat_router_queue_depth",
                "gauge",
                "Frames stored in the queue, waiting for their recipient.",
                &plain(depth),
            );
        }
        let errors: Vec<_> = CODES
            .iter()
            .zip(&self.errors)
            .map(|(code, n)| {
                let labels = format!("{{code=\"{}\"}}", code.as_str());
                (labels, n.load(Relaxed).to_string())
            })
            .collect();
        metric(
            "chat_router_errors_total",
            "counter",
            "Error frames sent to clients, by code.",
            &errors,
        );
        metric(
            "chat_router_commit_seconds",
            "histogram",
            "Time from a frame's submission to the queue to its commit.",
            &self.histogram(),
        );
        out
    }

    /// The histogram's cumulative buckets, `+Inf`, sum and count.
    fn histogram(&self) -> Vec<(String, String)> {
        let count = self.commit_count.load(Relaxed);
        let mut lines = Vec::with_capacity(BUCKETS.len() + 3);
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(&self.commit_buckets) {
            cumulative += n.load(Relaxed);
            lines.push((format!("_bucket{{le=\"{bound}\"}}"), cumulative.to_string()));
        }
        lines.push(("_bucket{le=\"+Inf\"}".to_owned(), count.to_string()));
        let sum = self.commit_micros.load(Relaxed) as f64 / 1e6;
        lines.push(("_sum".to_owned(), sum.to_string()));
        lines.push(("_count".to_owned(), count.to_string()));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_errors_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.session_started();
        m.frame_in();
        m.frame_out();
        m.frame_out();
        m.error(ErrorCode::RateLimited);
        m.commit(Duration::from_micros(300));
        m.commit(Duration::from_millis(3));
        m.commit(Duration::from_secs(10));
        let text = m.render(Gauges {
            sessions: 1,
            queue_depth: Some(7),
            queue_up: true,
        });
        for line in [
            "chat_router_sessions 1",
            "chat_router_sessions_total 1",
            "chat_router_frames_in_total 1",
            "chat_router_frames_out_total 2",
            "chat_router_queue_depth 7",
            "chat_router_queue_up 1",
            "chat_router_errors_total{code=\"rate-limited\"} 1",
            "chat_router_errors_total{code=\"internal\"} 0",
            "chat_router_commit_seconds_bucket{le=\"0.0005\"} 1",
            "chat_router_commit_seconds_bucket{le=\"0.005\"} 2",
            "chat_router_commit_seconds_bucket{le=\"2.5\"} 2",
            "chat_router_commit_seconds_bucket{le=\"+Inf\"} 3",
            "chat_router_commit_seconds_count 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(text.contains("# TYPE chat_router_commit_seconds histogram"));
        let down = m.render(Gauges {
            sessions: 0,
            queue_depth: None,
            queue_up: false,
        });
        assert!(
            down.lines().any(|l| l == "chat_router_queue_up 0"),
            "{down}"
        );
        assert!(!down.contains("chat_router_queue_depth "), "{down}");
    }
}

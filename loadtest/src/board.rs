//! The parent's view of its workers: the latest report of each, its final one once sent,
//! and whether it went away. Pure: the run feeds it the messages it reads.

use crate::stats::{self, new_latency, Counters, Latency};
use crate::wire::{Report, StormTally};
use crate::worker::Message;

/// A worker's final report.
#[derive(Clone)]
struct Final {
    counters: Counters,
    /// Its latency histogram, V2-serialized.
    histogram: Vec<u8>,
    /// Per message, its slowest fast stream's latency (µs).
    completion: Vec<u64>,
}

/// The latest word from every worker.
pub struct Board {
    latest: Vec<Option<Report>>,
    /// Each worker's last report, once it has sent it.
    finals: Vec<Option<Final>>,
    gone: Vec<Option<Option<String>>>,
    /// Latencies reported since the progress line last showed a p99.
    pub recent: Latency,
}

impl Board {
    /// A board for `workers` workers that have not reported yet.
    pub fn new(workers: usize) -> Board {
        Board {
            latest: vec![None; workers],
            finals: vec![None; workers],
            gone: vec![None; workers],
            recent: new_latency(),
        }
    }

    /// Takes in one message from a worker.
    pub fn apply(&mut self, message: Message) {
        match message {
            Message::Frame(w, report, histogram) => {
                if report.is_final {
                    self.finals[w] = Some(Final {
                        counters: report.counters.clone(),
                        histogram,
                        completion: report.completion_us.clone(),
                    });
                } else {
                    // A bad progress histogram only blurs the live p99; the final one is checked.
                    let _ = stats::merge_encoded(&mut self.recent, &histogram);
                }
                self.latest[w] = Some(*report);
            }
            Message::Gone(w, error) => self.gone[w] = Some(error),
        }
    }

    /// Every worker's counters merged (final ones where they arrived).
    pub fn counters(&self) -> Counters {
        let mut total = Counters::default();
        for (latest, last) in self.latest.iter().zip(&self.finals) {
            match (last, latest) {
                (Some(f), _) => total.merge(&f.counters),
                (None, Some(r)) => total.merge(&r.counters),
                (None, None) => {}
            }
        }
        total
    }

    /// Every worker has established or failed all of its streams (or is gone).
    pub fn all_connected(&self) -> bool {
        (0..self.latest.len()).all(|w| {
            self.gone[w].is_some() || self.latest[w].as_ref().is_some_and(|r| r.connect_done)
        })
    }

    /// Every worker has sent its final report (or is gone).
    pub fn all_final(&self) -> bool {
        (0..self.latest.len()).all(|w| self.finals[w].is_some() || self.gone[w].is_some())
    }

    /// Why the first stream that failed in TLS failed, from whichever worker said so.
    pub fn first_tls_error(&self) -> Option<String> {
        self.latest
            .iter()
            .flatten()
            .find_map(|r| r.tls_error.clone())
    }

    /// One line for each worker that sent no final report.
    pub fn worker_errors(&self) -> Vec<String> {
        (0..self.latest.len())
            .filter(|&w| self.finals[w].is_none())
            .map(|w| match &self.gone[w] {
                Some(Some(e)) => format!("worker {w} broke off: {e}"),
                Some(None) => format!("worker {w} exited without a final report"),
                None => format!("worker {w} did not report in time"),
            })
            .collect()
    }

    /// The final histograms merged: every latency of the run.
    pub fn latency(&self) -> Result<Latency, String> {
        let mut latency = new_latency();
        for f in self.finals.iter().flatten() {
            stats::merge_encoded(&mut latency, &f.histogram)
                .map_err(|e| format!("a worker sent a bad histogram: {e}"))?;
        }
        Ok(latency)
    }

    /// The final reports that arrived.
    fn final_reports(&self) -> impl Iterator<Item = &Report> {
        self.latest
            .iter()
            .zip(&self.finals)
            .filter(|(_, f)| f.is_some())
            .filter_map(|(r, _)| r.as_ref())
    }

    /// From each stream's end to its next head (`--reconnect`), merged over the workers, µs.
    pub fn reconnect_us(&self) -> Result<Latency, String> {
        let mut merged = new_latency();
        for r in self.final_reports() {
            stats::merge_encoded(&mut merged, &r.reconnect_us)
                .map_err(|e| format!("a worker sent a bad histogram: {e}"))?;
        }
        Ok(merged)
    }

    /// The storm (`--storm`), merged over the workers; `None` when no worker reported one.
    pub fn storm(&self) -> Option<StormTally> {
        let mut merged: Option<StormTally> = None;
        for storm in self.final_reports().filter_map(|r| r.storm.as_ref()) {
            merged.get_or_insert_with(StormTally::default).merge(storm);
        }
        merged
    }

    /// Per message, the latency until its slowest fast stream of any worker had it.
    pub fn completion(&self) -> Latency {
        let mut worst: Vec<u64> = Vec::new();
        for f in self.finals.iter().flatten() {
            if worst.len() < f.completion.len() {
                worst.resize(f.completion.len(), 0);
            }
            for (w, &c) in worst.iter_mut().zip(&f.completion) {
                *w = (*w).max(c);
            }
        }
        let mut completion = new_latency();
        for c in worst.into_iter().filter(|&c| c > 0) {
            completion.saturating_record(c);
        }
        completion
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(w: usize, is_final: bool, received: u64, completion: Vec<u64>) -> Message {
        let mut latency = new_latency();
        latency.saturating_record(100 * (w as u64 + 1));
        let report = Report {
            is_final,
            connect_done: true,
            counters: Counters {
                received,
                ..Counters::default()
            },
            completion_us: completion,
            ..Report::default()
        };
        Message::Frame(w, Box::new(report), stats::encode(&latency))
    }

    #[test]
    fn finals_win_and_completion_is_the_slowest_worker_per_message() {
        let mut board = Board::new(3);
        assert!(!board.all_connected());
        board.apply(frame(0, false, 5, Vec::new()));
        board.apply(frame(0, true, 7, vec![10, 50]));
        board.apply(frame(1, true, 3, vec![30, 20, 40]));
        board.apply(Message::Gone(2, Some("pipe broke".to_owned())));
        assert!(board.all_connected() && board.all_final());
        assert_eq!(board.counters().received, 10);
        assert_eq!(board.latency().unwrap().len(), 2);
        let completion = board.completion();
        assert_eq!(completion.len(), 3);
        assert!(completion.equivalent(completion.max(), 50));
        assert_eq!(
            board.worker_errors(),
            vec!["worker 2 broke off: pipe broke"]
        );
    }
}

//! Which records a sink shows. The engine produces every record kind for every socket; stdout
//! shows what the flags ask for (`--no-transitions`, `--timelines`, `--pid`), while the export
//! takes everything.

use std::{collections::HashSet, ops::Deref};

use crate::record::Record;

#[derive(Clone, Debug, PartialEq, Eq)]
/// What one destination shows of the records the engine makes.
pub struct Filter {
    /// Show `transition` records.
    pub transitions: bool,
    /// Show `timeline` records.
    pub timelines: bool,
    /// Keep only sockets owned by these processes (empty: all).
    pub pids: HashSet<u32>,
}

impl Filter {
    /// Lets every record through.
    pub fn everything() -> Self {
        Self {
            transitions: true,
            timelines: true,
            pids: HashSet::new(),
        }
    }

    /// Does this filter let every record through unchanged?
    pub fn is_everything(&self) -> bool {
        self.transitions && self.timelines && self.pids.is_empty()
    }

    fn wanted(&self, pid: Option<u32>) -> bool {
        self.pids.is_empty() || pid.is_some_and(|p| self.pids.contains(&p))
    }

    /// The record as this sink shows it, or `None`. A digest keeps only the wanted processes
    /// (and is dropped when none is left).
    pub fn apply<'a>(&self, record: &'a Record) -> Option<Shown<'a>> {
        let keep = match record {
            Record::Transition(r) => self.transitions && self.wanted(r.pid),
            Record::Timeline(r) => self.timelines && self.wanted(r.pid),
            Record::CloseWait(r) | Record::Stuck(r) => self.wanted(r.pid),
            Record::CloseWaitResolved(r) | Record::StuckResolved(r) => self.wanted(r.pid),
            Record::Digest(d) if !self.pids.is_empty() => {
                let mut d = d.clone();
                d.processes.retain(|p| self.wanted(p.pid));
                d.stuck = d.processes.iter().map(|p| p.count).sum();
                return (d.stuck > 0).then(|| Shown::Changed(Box::new(Record::Digest(d))));
            }
            _ => true,
        };
        keep.then_some(Shown::Unchanged(record))
    }
}

/// A record as a [`Filter`] lets it through: a pointer, not a copy, so that the hot path does
/// not move a whole [`Record`] for each one.
#[derive(Debug)]
pub enum Shown<'a> {
    /// The record as the engine made it.
    Unchanged(&'a Record),
    /// A record the filter cut down (a digest of fewer processes).
    Changed(Box<Record>),
}

impl Deref for Shown<'_> {
    type Target = Record;

    fn deref(&self) -> &Record {
        match self {
            Shown::Unchanged(r) => r,
            Shown::Changed(r) => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        record::{DigestProcess, DigestRecord},
        testing::a_client_and_a_server,
    };

    fn kinds(filter: &Filter, records: &[Record]) -> Vec<(&'static str, Option<u32>)> {
        records
            .iter()
            .filter_map(|r| filter.apply(r))
            .map(|r| {
                let pid = match &*r {
                    Record::Transition(t) => t.pid,
                    Record::Timeline(t) => t.pid,
                    _ => None,
                };
                (r.type_name(), pid)
            })
            .collect()
    }

    #[test]
    fn everything_passes_everything() {
        let records = a_client_and_a_server();
        assert_eq!(kinds(&Filter::everything(), &records).len(), records.len());
        assert!(Filter::everything().is_everything());
    }

    #[test]
    fn types_and_pids() {
        let records = a_client_and_a_server();
        let no_transitions = Filter {
            transitions: false,
            ..Filter::everything()
        };
        assert_eq!(
            kinds(&no_transitions, &records),
            vec![("timeline", Some(7))]
        );
        let pid7 = Filter {
            timelines: false,
            pids: HashSet::from([7]),
            ..Filter::everything()
        };
        let shown = kinds(&pid7, &records);
        assert_eq!(shown.len(), 5);
        assert!(shown.iter().all(|&k| k == ("transition", Some(7))));
    }

    #[test]
    fn digest_keeps_wanted_processes() {
        let digest = Record::Digest(DigestRecord {
            ts_ns: 1,
            time: crate::units::WallTime::default(),
            stuck: 3,
            processes: vec![
                DigestProcess {
                    state: crate::event::TcpState::CloseWait,
                    pid: Some(1),
                    comm: Some("a".into()),
                    container: None,
                    count: 2,
                    oldest_age_ms: 9,
                    diagnosis: None,
                },
                DigestProcess {
                    state: crate::event::TcpState::CloseWait,
                    pid: None,
                    comm: None,
                    container: None,
                    count: 1,
                    oldest_age_ms: 5,
                    diagnosis: None,
                },
            ],
        });
        let only = |pid| Filter {
            pids: HashSet::from([pid]),
            ..Filter::everything()
        };
        let Some(Shown::Changed(kept)) = only(1).apply(&digest) else {
            panic!("the digest of pid 1 is kept, cut down");
        };
        let Record::Digest(d) = *kept else {
            panic!("a digest stays a digest");
        };
        assert_eq!((d.stuck, d.processes.len()), (2, 1));
        assert!(only(2).apply(&digest).is_none());
    }
}

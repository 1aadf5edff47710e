//! Accounting of what each destination (stdout, the export) was to show and what it lost, by
//! record type, so that for every type `delivered + dropped = shown` holds exactly.
//!
//! These counts appear in `lost` records (totals so far, so a reader that missed one still has
//! the full count) and in the `summary`.

use serde::{Deserialize, Serialize};

use crate::record::Record;

/// The record types that flow through an output and can be lost there. The `header` and the
/// `summary` are not counted: they are never dropped for lack of room (the header goes first
/// into an empty buffer; the summary waits for room), only with the rest of stdout's queue on
/// a second stop signal at exit, when the summary on stderr has the final count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `transition` records.
    Transition,
    /// `timeline` records.
    Timeline,
    /// `close_wait` records.
    CloseWait,
    /// `close_wait_resolved` records.
    CloseWaitResolved,
    /// `stuck` records.
    Stuck,
    /// `stuck_resolved` records.
    StuckResolved,
    /// `digest` records.
    Digest,
    /// `lost` records.
    Lost,
}

impl Kind {
    /// The counted kind of a record; `None` for the header, summary and analysis.
    pub fn of(record: &Record) -> Option<Kind> {
        Some(match record {
            Record::Transition(_) => Kind::Transition,
            Record::Timeline(_) => Kind::Timeline,
            Record::CloseWait(_) => Kind::CloseWait,
            Record::CloseWaitResolved(_) => Kind::CloseWaitResolved,
            Record::Stuck(_) => Kind::Stuck,
            Record::StuckResolved(_) => Kind::StuckResolved,
            Record::Digest(_) => Kind::Digest,
            Record::Lost(_) => Kind::Lost,
            Record::Header(_) | Record::Summary(_) | Record::Analysis(_) => return None,
        })
    }

    /// The record's `type`, as the schema names it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Transition => "transition",
            Kind::Timeline => "timeline",
            Kind::CloseWait => "close_wait",
            Kind::CloseWaitResolved => "close_wait_resolved",
            Kind::Stuck => "stuck",
            Kind::StuckResolved => "stuck_resolved",
            Kind::Digest => "digest",
            Kind::Lost => "lost",
        }
    }
}

/// A count per record type. Each field is named after the record's `type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ByType {
    /// `transition` records.
    pub transition: u64,
    /// `timeline` records.
    pub timeline: u64,
    /// `close_wait` records.
    pub close_wait: u64,
    /// `close_wait_resolved` records.
    pub close_wait_resolved: u64,
    /// `stuck` records.
    pub stuck: u64,
    /// `stuck_resolved` records.
    pub stuck_resolved: u64,
    /// `digest` records.
    pub digest: u64,
    /// `lost` records.
    pub lost: u64,
}

impl ByType {
    /// The count of one kind.
    pub fn get(&self, kind: Kind) -> u64 {
        match kind {
            Kind::Transition => self.transition,
            Kind::Timeline => self.timeline,
            Kind::CloseWait => self.close_wait,
            Kind::CloseWaitResolved => self.close_wait_resolved,
            Kind::Stuck => self.stuck,
            Kind::StuckResolved => self.stuck_resolved,
            Kind::Digest => self.digest,
            Kind::Lost => self.lost,
        }
    }

    /// Adds `n` to the count of `kind`.
    pub fn add(&mut self, kind: Kind, n: u64) {
        let slot = match kind {
            Kind::Transition => &mut self.transition,
            Kind::Timeline => &mut self.timeline,
            Kind::CloseWait => &mut self.close_wait,
            Kind::CloseWaitResolved => &mut self.close_wait_resolved,
            Kind::Stuck => &mut self.stuck,
            Kind::StuckResolved => &mut self.stuck_resolved,
            Kind::Digest => &mut self.digest,
            Kind::Lost => &mut self.lost,
        };
        *slot += n;
    }

    /// The records of each counted type in `records` (the header, summary and analysis are
    /// not counted): what a destination delivered, read back from its output.
    pub fn count(records: &[Record]) -> Self {
        let mut counts = Self::default();
        for kind in records.iter().filter_map(Kind::of) {
            counts.add(kind, 1);
        }
        counts
    }

    /// Adds every count of `other`.
    pub fn add_all(&mut self, other: &ByType) {
        for kind in Self::KINDS {
            self.add(kind, other.get(kind));
        }
    }

    /// Every kind, in schema order.
    pub const KINDS: [Kind; 8] = [
        Kind::Transition,
        Kind::Timeline,
        Kind::CloseWait,
        Kind::CloseWaitResolved,
        Kind::Stuck,
        Kind::StuckResolved,
        Kind::Digest,
        Kind::Lost,
    ];

    /// The sum over every type.
    pub fn total(&self) -> u64 {
        Self::KINDS.iter().map(|&k| self.get(k)).sum()
    }

    /// The sum over every type but `lost` (drops of `lost` records alone do not make a new
    /// `lost` record, or a stalled stdout would get one every tick).
    pub fn total_but_lost(&self) -> u64 {
        self.total() - self.lost
    }
}

/// What one destination was to show and what it dropped: `delivered = shown - dropped`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Destination {
    /// Records this destination was to show (after its filter), by type.
    pub shown: ByType,
    /// Of those, records it dropped (a stalled reader of stdout past `--output-buffer`, stdout's
    /// queue on a second stop signal at exit, or a destination whose writes failed), by type.
    pub dropped: ByType,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_by_type() {
        let mut a = ByType::default();
        a.add(Kind::Transition, 3);
        a.add(Kind::Lost, 2);
        a.add(Kind::CloseWaitResolved, 1);
        let mut b = ByType::default();
        b.add_all(&a);
        b.add_all(&a);
        assert_eq!(b.transition, 6);
        assert_eq!(b.close_wait_resolved, 2);
        assert_eq!(b.total(), 12);
        assert_eq!(b.total_but_lost(), 8);
    }

    #[test]
    fn json_names_are_the_record_types() {
        let mut a = ByType::default();
        for (i, kind) in ByType::KINDS.into_iter().enumerate() {
            a.add(kind, i as u64 + 1);
        }
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"transition":1,"timeline":2,"close_wait":3,"close_wait_resolved":4,"stuck":5,"stuck_resolved":6,"digest":7,"lost":8}"#
        );
        // Absent fields (an older or newer tracer) read as 0.
        let back: ByType = serde_json::from_str(r#"{"transition":7}"#).unwrap();
        assert_eq!(back.total(), 7);
    }
}

//! Reads records back from NDJSON, line by line, without trusting the input: lines are capped
//! in length, every problem names its line, and a newer schema's record types and fields are
//! skipped with a warning. A cut-short last line (a killed writer) is a warning, not an error.

use std::{io::BufRead, sync::OnceLock};

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::{
    error::{InputError, LineProblem, Warning},
    record::{
        AnalysisRecord, CloseWaitRecord, CloseWaitResolvedRecord, DigestRecord, Header, LostRecord,
        Record, Summary, TimelineRecord, TransitionRecord,
    },
};

/// Longest line read. Real records are under 2 KiB; a timeline of a very long-lived socket
/// with many states stays far below this.
pub const MAX_LINE: usize = 1 << 20;

/// Called with the path of each field a record's type does not know (`field`, `a.b`).
type Unknown<'a> = &'a mut dyn FnMut(String);

/// A record type this tracer reads: its `type`, and how to parse it from the line's text or
/// from an already parsed JSON value.
struct Kind {
    name: &'static str,
    from_str: fn(&str, Unknown) -> Result<Record, String>,
    from_value: fn(Value, Unknown) -> Result<Record, String>,
}

/// Deserializes a `T` from `de`, telling `unknown` of every field `T` does not read (serde
/// skips them; `type` is the tag, not unknown). On error, `retry` redoes it with the path of
/// the bad value tracked for the message (tracking costs an allocation per key, so it is only
/// paid for a bad record).
fn parse_as<'de, T, D>(de: D, unknown: Unknown, wrap: fn(T) -> Record) -> Result<Record, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    let mut ignored = |path: serde_ignored::Path| {
        let path = path.to_string();
        if path != "type" {
            unknown(path);
        }
    };
    serde_ignored::deserialize(de, &mut ignored).map(wrap)
}

/// The message for a record `T` cannot be read from `de`: the path of the bad value first.
fn explain<'de, T, D>(de: D) -> String
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(_) => "not a record of its type".to_owned(),
        Err(e) => match e.path().to_string().as_str() {
            "." => message(e.inner()),
            path => format!("{path}: {}", message(e.inner())),
        },
    }
}

/// An error's message without serde_json's ` at line L column C` (the line is ours to name;
/// a record is one line).
fn message(e: &impl std::fmt::Display) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) if text[at..].contains(" column ") => text[..at].to_owned(),
        _ => text,
    }
}

/// Parses the whole of `text` as a `T`: nothing may follow the record.
fn parse_str<T: for<'de> Deserialize<'de>>(
    text: &str,
    unknown: Unknown,
    wrap: fn(T) -> Record,
) -> Result<Record, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    match parse_as(&mut de, unknown, wrap).and_then(|record| de.end().map(|()| record)) {
        Ok(record) => Ok(record),
        Err(e) if e.is_syntax() || e.is_eof() => Err(message(&e)),
        Err(_) => Err(explain::<T, _>(&mut serde_json::Deserializer::from_str(
            text,
        ))),
    }
}

/// Parses an already parsed JSON value as a `T`.
fn parse_value<T: for<'de> Deserialize<'de>>(
    value: Value,
    unknown: Unknown,
    wrap: fn(T) -> Record,
) -> Result<Record, String> {
    parse_as(value.clone(), unknown, wrap).map_err(|_| explain::<T, _>(value))
}

macro_rules! kind {
    ($name:literal, $ty:ty, $variant:expr) => {
        Kind {
            name: $name,
            from_str: |text, unknown| parse_str::<$ty>(text, unknown, $variant),
            from_value: |value, unknown| parse_value::<$ty>(value, unknown, $variant),
        }
    };
}

fn kinds() -> &'static [Kind] {
    static KINDS: OnceLock<Vec<Kind>> = OnceLock::new();
    KINDS.get_or_init(|| {
        vec![
            kind!("header", Header, |r| Record::Header(Box::new(r))),
            kind!("transition", TransitionRecord, Record::Transition),
            kind!("timeline", TimelineRecord, Record::Timeline),
            kind!("close_wait", CloseWaitRecord, |r| Record::CloseWait(
                Box::new(r)
            )),
            kind!(
                "close_wait_resolved",
                CloseWaitResolvedRecord,
                Record::CloseWaitResolved
            ),
            kind!("stuck", CloseWaitRecord, |r| Record::Stuck(Box::new(r))),
            kind!(
                "stuck_resolved",
                CloseWaitResolvedRecord,
                Record::StuckResolved
            ),
            kind!("digest", DigestRecord, Record::Digest),
            kind!("lost", LostRecord, |r| Record::Lost(Box::new(r))),
            kind!("summary", Summary, |r| Record::Summary(Box::new(r))),
            kind!("analysis", AnalysisRecord, Record::Analysis),
        ]
    })
}

/// Reads records from NDJSON.
pub struct Reader<R> {
    input: R,
    line: u64,
    buf: Vec<u8>,
}

impl<R: BufRead> Reader<R> {
    /// A reader of `input`, from its first line.
    pub fn new(input: R) -> Self {
        Self {
            input,
            line: 0,
            buf: Vec::new(),
        }
    }

    /// The next record and its line number, or `None` at the end. Warnings go to `warn`.
    pub fn next_record(
        &mut self,
        warn: &mut dyn FnMut(Warning),
    ) -> Result<Option<(u64, Record)>, InputError> {
        loop {
            self.buf.clear();
            let limit = u64::try_from(MAX_LINE).unwrap_or(u64::MAX) + 1;
            let n = std::io::Read::take(&mut self.input, limit)
                .read_until(b'\n', &mut self.buf)
                .map_err(|source| InputError::Read { source })?;
            if n == 0 {
                return Ok(None);
            }
            self.line += 1;
            let line = self.line;
            let ended = self.buf.last() == Some(&b'\n');
            if !ended && self.buf.len() > MAX_LINE {
                return Err(bad(line, LineProblem::TooLong { max: MAX_LINE }));
            }
            let bytes = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
            let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match parse_line(bytes, line, warn) {
                Ok(Some(record)) => return Ok(Some((line, record))),
                Ok(None) => {}
                // A writer killed mid-line leaves a last line with no newline that starts as
                // a record does. Anything else is bad input.
                Err(_) if !ended && bytes.first() == Some(&b'{') && self.at_end()? => {
                    warn(Warning::TruncatedLastLine { line });
                    return Ok(None);
                }
                Err(problem) => return Err(bad(line, problem)),
            }
        }
    }

    fn at_end(&mut self) -> Result<bool, InputError> {
        self.input
            .fill_buf()
            .map(<[u8]>::is_empty)
            .map_err(|source| InputError::Read { source })
    }
}

fn bad(line: u64, problem: LineProblem) -> InputError {
    InputError::Line { line, problem }
}

/// One line: a record, `None` for a record type skipped with a warning, or what is wrong.
///
/// A line as the tracer writes it (`{"type":"NAME",...`) is parsed straight into its record
/// type; any other line (keys reordered by a tool) is parsed as JSON first to find its type.
fn parse_line(
    bytes: &[u8],
    line: u64,
    warn: &mut dyn FnMut(Warning),
) -> Result<Option<Record>, LineProblem> {
    let text = std::str::from_utf8(bytes).map_err(|_| LineProblem::NotUtf8)?;
    let (kind, value) = if let Some(name) = leading_type(text) {
        (find_kind(name, line, warn), None)
    } else {
        let value: Value = serde_json::from_str(text).map_err(|e| LineProblem::Json {
            message: e.to_string(),
        })?;
        let Value::Object(map) = &value else {
            return Err(LineProblem::NotObject {
                found: json_kind(&value),
            });
        };
        let name = match map.get("type") {
            None => return Err(LineProblem::NoType),
            Some(Value::String(name)) => name,
            Some(_) => return Err(LineProblem::TypeNotString),
        };
        (find_kind(name, line, warn), Some(value))
    };
    let Some(kind) = kind else {
        return Ok(None);
    };
    let mut unknown = |field: String| {
        warn(Warning::UnknownField {
            line,
            kind: kind.name,
            field,
        });
    };
    let parsed = match value {
        Some(value) => {
            (kind.from_value)(value, &mut unknown).map_err(|message| LineProblem::Record {
                kind: kind.name,
                message,
            })
        }
        None => (kind.from_str)(text, &mut unknown).map_err(|message| {
            // Not a record of its type: say whether it is JSON at all.
            match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Err(e) => LineProblem::Json {
                    message: e.to_string(),
                },
                Ok(_) => LineProblem::Record {
                    kind: kind.name,
                    message,
                },
            }
        }),
    };
    parsed.map(Some)
}

/// The `type` of a line that starts as the tracer writes records: `{"type":"NAME",`.
fn leading_type(text: &str) -> Option<&str> {
    let rest = text.strip_prefix(r#"{"type":""#)?;
    let (name, after) = rest.split_at(rest.find('"')?);
    let plain = name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    (plain && after[1..].starts_with(',')).then_some(name)
}

/// The record type named `name`, or `None` after a warning for a type this tracer does not
/// read (from a newer tracer).
fn find_kind(name: &str, line: u64, warn: &mut dyn FnMut(Warning)) -> Option<&'static Kind> {
    let kind = kinds().iter().find(|k| k.name == name);
    if kind.is_none() {
        warn(Warning::UnknownType {
            line,
            name: name.to_owned(),
        });
    }
    kind
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRANSITION: &str = r#"{"type":"transition","ts_ns":10,"time":"2026-11-25T08:00:00.000000Z","skaddr":"0xffff888102716f00","family":"ipv4","laddr":"127.0.0.1","lport":35972,"raddr":"127.0.0.1","rport":9999,"old_state":"SYN_SENT","new_state":"ESTABLISHED","duration_ns":197813,"pid":21807,"comm":"python3","ctx_pid":21807,"ctx_comm":"python3","cpu":0}"#;

    /// Every record read, the warnings, and the error that stopped the reading.
    fn read(input: &str) -> (Vec<Record>, Vec<Warning>, Option<InputError>) {
        let mut reader = Reader::new(input.as_bytes());
        let (mut records, mut warnings) = (Vec::new(), Vec::new());
        loop {
            match reader.next_record(&mut |w| warnings.push(w)) {
                Ok(Some((_, r))) => records.push(r),
                Ok(None) => return (records, warnings, None),
                Err(e) => return (records, warnings, Some(e)),
            }
        }
    }

    fn error_text(input: &str) -> String {
        read(input).2.expect("an error").to_string()
    }

    #[test]
    fn reads_records_and_skips_blank_lines() {
        let (records, warnings, err) = read(&format!("{TRANSITION}\n\n  \r\n{TRANSITION}\r\n"));
        assert!(err.is_none() && warnings.is_empty());
        assert_eq!(records.len(), 2);
        let Record::Transition(t) = &records[0] else {
            panic!("a transition")
        };
        // A record from before the protocol field was written reads as TCP.
        assert_eq!((t.protocol, t.lport), (6, 35972));
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let cases = [
            ("nonsense\n", "line 1: not JSON"),
            ("[1,2]\n", "line 1: expected a JSON object, found an array"),
            ("{\"ts_ns\":1}\n", "line 1: no \"type\" field"),
            ("{\"type\":7}\n", "line 1: \"type\" is not a string"),
            (
                "{\"type\":\"lost\",\"ts_ns\":1}\n",
                "line 1: bad lost record: missing field `time`",
            ),
            (
                &format!(
                    "{TRANSITION}\n{}\n",
                    TRANSITION.replace("\"ts_ns\":10", "\"ts_ns\":-1")
                ),
                "line 2: bad transition record: ts_ns: invalid value: integer `-1`",
            ),
            (
                &format!("{}\n", TRANSITION.replace("SYN_SENT", "SYN_SEEN")),
                "line 1: bad transition record: old_state: unknown TCP state \"SYN_SEEN\"",
            ),
        ];
        for (input, expected) in cases {
            let text = error_text(input);
            assert!(text.starts_with(expected), "{text:?} for {input:?}");
        }
        let text = error_text("\u{0}\u{1}\n\u{ff}");
        assert!(text.starts_with("line 1: not JSON"), "{text}");
        let mut binary = b"{\"type\":\"lost\"}\n".to_vec();
        binary.extend_from_slice(&[0xff, 0xfe, b'\n']);
        let err = Reader::new(&binary[..])
            .next_record(&mut |_| {})
            .unwrap_err();
        assert!(err.to_string().starts_with("line 1: bad lost record"));
    }

    #[test]
    fn not_utf8() {
        let err = Reader::new(&b"{\"type\":\"\xff\"}\n"[..])
            .next_record(&mut |_| {})
            .unwrap_err();
        assert_eq!(err.to_string(), "line 1: not UTF-8 text");
    }

    #[test]
    fn truncated_last_line_is_a_warning() {
        let cut = &TRANSITION[..TRANSITION.len() / 2];
        let (records, warnings, err) = read(&format!("{TRANSITION}\n{cut}"));
        assert!(err.is_none());
        assert_eq!(records.len(), 1);
        assert_eq!(warnings, vec![Warning::TruncatedLastLine { line: 2 }]);
        // The same cut followed by more lines is corruption, not a killed writer.
        assert!(read(&format!("{cut}\n{TRANSITION}\n")).2.is_some());
        // A last line that does not start like a record is not a cut record either.
        assert!(read(&format!("{TRANSITION}\ngarbage")).2.is_some());
    }

    #[test]
    fn newer_schema_types_and_fields_are_skipped_with_warnings() {
        let extra = TRANSITION.replace("\"cpu\":0", "\"cpu\":0,\"cgroup\":\"/a\"");
        let input = format!("{{\"type\":\"socket_stats\",\"x\":1}}\n{extra}\n");
        let (records, warnings, err) = read(&input);
        assert!(err.is_none());
        assert_eq!(records.len(), 1);
        assert_eq!(
            warnings,
            vec![
                Warning::UnknownType {
                    line: 1,
                    name: "socket_stats".into()
                },
                Warning::UnknownField {
                    line: 2,
                    kind: "transition",
                    field: "cgroup".into()
                },
            ]
        );
    }

    #[test]
    fn long_lines_are_refused_without_reading_them_whole() {
        let long = format!("{{\"type\":\"{}\"}}\n", "x".repeat(MAX_LINE + 10));
        assert_eq!(
            error_text(&long),
            format!("line 1: longer than {MAX_LINE} bytes (not a tracer record)")
        );
    }

    /// A line with its keys in another order (a tool rewrote it) takes the other path: the
    /// same record, the same warnings, the same errors.
    #[test]
    fn reordered_keys_read_the_same() {
        let extra = TRANSITION.replace("\"cpu\":0", "\"cpu\":0,\"cgroup\":\"/a\"");
        let body = extra
            .strip_prefix("{\"type\":\"transition\",")
            .expect("the tracer's order");
        let reordered = format!("{{{},\"type\":\"transition\"}}", &body[..body.len() - 1]);
        let (a, wa, ea) = read(&format!("{extra}\n"));
        let (b, wb, eb) = read(&format!("{reordered}\n"));
        assert!(ea.is_none() && eb.is_none());
        assert_eq!(a, b);
        assert_eq!(wa, wb);
        assert_eq!(wa.len(), 1, "{wa:?}");
        let bad = |line: &str| error_text(&format!("{}\n", line.replace("SYN_SENT", "SYN_SEEN")));
        assert_eq!(bad(&extra), bad(&reordered));
    }
}

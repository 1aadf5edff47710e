//! Fuzz-style tests: `tracer analyze`'s whole pure path (reader, replay, statistics, text and
//! JSON output) fed random bytes, cut and corrupted exports, and hostile values. It may refuse
//! the input; it must never panic.

use std::{fs, sync::OnceLock};

use proptest::{prelude::*, test_runner::FileFailurePersistence};
use tracer::{
    analyze::{analyze, reader::MAX_LINE, Options},
    error::{AnalyzeError, InputError, Warning},
    record::AnalysisRecord,
    sink::{JsonSink, TextSink},
};

fn fixture() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| fs::read(crate::support::fixture()).unwrap())
}

/// Analyses `input` with both outputs and every record shown; returns the text result.
fn analyse(input: &[u8]) -> (Result<AnalysisRecord, AnalyzeError>, Vec<Warning>) {
    let opts = Options {
        timelines: true,
        transitions: true,
        close_wait_threshold_ns: Some(1),
        ..Options::default()
    };
    let mut warnings = Vec::new();
    let mut json = JsonSink::new(Vec::new());
    let _ = analyze(input, &opts, &mut json, &mut |w| warnings.push(w));
    let mut text = TextSink::new(Vec::new(), true);
    let result = analyze(input, &opts, &mut text, &mut |_| {});
    (result, warnings)
}

fn line_ends(bytes: &[u8]) -> Vec<usize> {
    bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i + 1)
        .collect()
}

proptest! {
    // Failures found before are kept next to this file, in analyze_fuzz.proptest-regressions,
    // and re-run first.
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = analyse(&bytes);
    }

    #[test]
    fn random_text_lines(lines in proptest::collection::vec("[ -~]{0,80}", 0..20)) {
        let _ = analyse(lines.join("\n").as_bytes());
    }

    /// A writer killed at any byte: the complete lines are analysed, a cut last line warned.
    #[test]
    fn cut_anywhere(cut in 0..fixture().len()) {
        let input = &fixture()[..cut];
        let (result, warnings) = analyse(input);
        let first_line = line_ends(fixture())[0];
        if cut >= first_line {
            prop_assert!(result.is_ok(), "cut at {cut}: {result:?}");
            // Cut inside a line, before its newline: a record with a piece missing.
            let line_start = line_ends(input).last().copied().unwrap_or(0);
            let cut_record = cut > line_start && fixture()[cut] != b'\n';
            prop_assert_eq!(
                warnings.iter().any(|w| matches!(w, Warning::TruncatedLastLine { .. })),
                cut_record,
                "cut at {}", cut
            );
        }
    }

    #[test]
    fn corrupted_bytes(
        edits in proptest::collection::vec((0..fixture().len(), any::<u8>()), 1..8)
    ) {
        let mut input = fixture().to_vec();
        for (at, byte) in edits {
            input[at] = byte;
        }
        let _ = analyse(&input);
    }

    #[test]
    fn lines_dropped_duplicated_and_swapped(
        ops in proptest::collection::vec((0..73usize, 0..73usize, 0..3u8), 1..12)
    ) {
        let text = std::str::from_utf8(fixture()).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        for (a, b, op) in ops {
            let (a, b) = (a % lines.len().max(1), b % lines.len().max(1));
            match op {
                0 if !lines.is_empty() => { lines.remove(a); }
                1 if !lines.is_empty() => { let l = lines[a]; lines.insert(b, l); }
                _ if !lines.is_empty() => lines.swap(a, b),
                _ => {}
            }
        }
        let _ = analyse(lines.join("\n").as_bytes());
    }

    /// Every number in the fixture replaced by a hostile one.
    #[test]
    fn hostile_numbers(
        value in prop_oneof![
            Just("0".to_owned()),
            Just("18446744073709551615".to_owned()),
            Just("-9223372036854775808".to_owned()),
            Just("9223372036854775807".to_owned()),
            Just("1e308".to_owned()),
            Just("null".to_owned()),
            any::<u64>().prop_map(|n| n.to_string()),
        ],
        every in 1..6usize,
    ) {
        let text = std::str::from_utf8(fixture()).unwrap();
        let re_number = |l: &str| -> String {
            let mut out = String::new();
            let mut n = 0;
            let mut chars = l.chars().peekable();
            while let Some(c) = chars.next() {
                if c == ':' && chars.peek().is_some_and(char::is_ascii_digit) {
                    while chars.peek().is_some_and(char::is_ascii_digit) {
                        chars.next();
                    }
                    n += 1;
                    out.push(':');
                    if n % every == 0 {
                        out.push_str(&value);
                    } else {
                        out.push('1');
                    }
                } else {
                    out.push(c);
                }
            }
            out
        };
        let input: String = text.lines().map(|l| re_number(l) + "\n").collect();
        let _ = analyse(input.as_bytes());
    }
}

#[test]
fn huge_line_is_refused() {
    let mut input = fixture()[..line_ends(fixture())[0]].to_vec();
    input.extend(std::iter::repeat_n(b'x', MAX_LINE * 2));
    input.push(b'\n');
    let (result, _) = analyse(&input);
    assert!(
        matches!(
            result,
            Err(AnalyzeError::Input(InputError::Line { line: 2, .. }))
        ),
        "{result:?}"
    );
}

#[test]
fn binary_data_is_refused() {
    let input: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    let (result, _) = analyse(&input);
    assert!(result.is_err());
}

#[test]
fn the_fixture_itself_analyses_cleanly() {
    let (result, warnings) = analyse(fixture());
    assert!(
        result.is_ok() && warnings.is_empty(),
        "{result:?} {warnings:?}"
    );
}

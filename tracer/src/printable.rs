//! Text a process controls, made safe to print in a line of text or on a terminal: its name
//! and its threads' names (`prctl(PR_SET_NAME)` takes any bytes but NUL), the paths of the
//! files it holds, the symbols of its binary. Printed raw, a name with a newline would start a
//! line of its own (a fake `*** CLOSE_WAIT` report), and an escape sequence would reach the
//! terminal. JSON needs none of this: serde escapes every string.

use std::borrow::Cow;

/// `text` with every control character, backslash, line or paragraph separator and
/// bidirectional-formatting character written as Rust escapes it (`\n`, `\u{1}`, `\\`,
/// `\u{202e}`); borrowed when there is none.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A name that may be missing: [`printable`], or `missing` as it is.
pub fn printable_or<'a>(text: Option<&'a str>, missing: &'a str) -> Cow<'a, str> {
    text.map_or(Cow::Borrowed(missing), printable)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || matches!(
            c,
            // Line and paragraph separators, which some readers split lines on.
            '\u{2028}' | '\u{2029}'
            // Unicode's Bidi_Control set.
            | '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_break_a_line_or_reach_the_terminal() {
        assert!(matches!(printable("nginx: worker"), Cow::Borrowed(_)));
        assert_eq!(printable("ünïcødé ✓"), "ünïcødé ✓");
        assert_eq!(
            printable("a\"b\\c\nd\u{1}\u{7f}\u{fffd}z"),
            "a\"b\\\\c\\nd\\u{1}\\u{7f}\u{fffd}z"
        );
        assert_eq!(printable("\u{1b}[2J"), "\\u{1b}[2J");
        assert_eq!(printable("evil\u{202e}txt"), "evil\\u{202e}txt");
        assert_eq!(
            printable("a\u{2028}b\u{2029}c\u{61c}"),
            "a\\u{2028}b\\u{2029}c\\u{61c}"
        );
        assert_eq!(printable("tab\there\r"), "tab\\there\\r");
        assert_eq!(printable_or(None, "-"), "-");
        assert_eq!(printable_or(Some("x\ny"), "-"), "x\\ny");
    }
}

//! Reading what a guest wrote on its report port: facts about the kernel, the smoke start of the
//! tracer, and each test binary's libtest output, into per-test results.

/// One test's result as libtest printed it.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed,
    /// Ignored (not run), with libtest's reason when it gave one.
    Skipped(String),
}

/// One boot's report.
#[derive(Debug, Default)]
pub struct Report {
    /// `@@END` was seen: the guest got to the end.
    pub complete: bool,
    pub release: Option<String>,
    pub facts: Vec<(String, String)>,
    pub smoke_rc: Option<i32>,
    /// The smoke start's stderr lines.
    pub smoke_stderr: Vec<String>,
    /// `(test name, outcome)` in the order they ran.
    pub tests: Vec<(String, Outcome)>,
    /// Test binaries that exited non-zero (`path`, status), e.g. a crash outside any test.
    pub bad_exits: Vec<(String, i32)>,
    /// libtest's failure sections: `(test name, its captured output)`.
    pub failure_output: Vec<(String, String)>,
    /// The last lines the guest wrote, for a report that stops early.
    pub tail: Vec<String>,
}

impl Report {
    pub fn parse(text: &str) -> Report {
        let mut report = Report::default();
        let mut in_smoke = false;
        let mut failure: Option<(String, String)> = None;
        let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
        report.tail = lines
            .iter()
            .rev()
            .take(40)
            .rev()
            .map(|l| (*l).to_owned())
            .collect();
        for line in lines {
            if let Some(rest) = line.strip_prefix("@@") {
                if let Some((name, body)) = failure.take() {
                    report.failure_output.push((name, body));
                }
                let (tag, value) = rest.split_once(' ').unwrap_or((rest, ""));
                match tag {
                    "END" => report.complete = true,
                    "KERNEL" => report.release = Some(value.to_owned()),
                    "FACT" => {
                        let (k, v) = value.split_once(' ').unwrap_or((value, ""));
                        report.facts.push((k.to_owned(), v.to_owned()));
                    }
                    "SMOKE-BEGIN" => in_smoke = true,
                    "SMOKE-END" => {
                        in_smoke = false;
                        report.smoke_rc = value.trim().parse().ok();
                    }
                    "EXIT" => {
                        let (path, rc) = value.rsplit_once(' ').unwrap_or((value, ""));
                        let rc = rc.trim().parse().unwrap_or(-1);
                        if rc != 0 {
                            report.bad_exits.push((path.to_owned(), rc));
                        }
                    }
                    _ => {}
                }
                continue;
            }
            if in_smoke {
                if let Some(err) = line.strip_prefix("stderr: ") {
                    report.smoke_stderr.push(err.to_owned());
                }
                continue;
            }
            if let Some(name) = line
                .strip_prefix("---- ")
                .and_then(|l| l.strip_suffix(" stdout ----"))
            {
                if let Some((n, body)) = failure.take() {
                    report.failure_output.push((n, body));
                }
                failure = Some((name.to_owned(), String::new()));
                continue;
            }
            if let Some((_, body)) = failure.as_mut() {
                if line == "failures:" || line.starts_with("test result:") {
                    let done = failure.take().expect("checked above");
                    report.failure_output.push(done);
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
                continue;
            }
            if let Some(result) = parse_test_line(line) {
                report.tests.push(result);
            }
        }
        if let Some(done) = failure.take() {
            report.failure_output.push(done);
        }
        report
    }

    #[cfg(test)]
    fn fact(&self, key: &str) -> Option<&str> {
        self.facts
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The tracer said it attached during the smoke start.
    pub fn attached(&self) -> bool {
        self.smoke_stderr.iter().any(|l| l.contains("attached to"))
    }

    /// The hook the tracer attached during the smoke start (`tp_btf` or `tracepoint`, from
    /// "attached to ... via tp_btf/..." on its stderr), and why it fell back, if it did.
    pub fn hook(&self) -> Option<(String, Option<String>)> {
        let line = self
            .smoke_stderr
            .iter()
            .find(|l| l.contains("attached to"))?;
        let via = line.split_once(" via ")?.1;
        let name = via.split('/').next()?.to_owned();
        let why = via
            .split_once("(tp_btf refused: ")
            .and_then(|(_, rest)| rest.rsplit_once(')'))
            .map(|(why, _)| why.to_owned());
        Some((name, why))
    }

    pub fn count(&self, want: fn(&Outcome) -> bool) -> usize {
        self.tests.iter().filter(|(_, o)| want(o)).count()
    }
}

/// `test NAME ... ok` / `... FAILED` / `... ignored[, REASON]`.
fn parse_test_line(line: &str) -> Option<(String, Outcome)> {
    let rest = line.strip_prefix("test ")?;
    let (name, result) = rest.split_once(" ... ")?;
    let outcome = match result {
        "ok" => Outcome::Passed,
        "FAILED" => Outcome::Failed,
        r if r.starts_with("ignored") => Outcome::Skipped(
            r.trim_start_matches("ignored")
                .trim_start_matches(", ")
                .to_owned(),
        ),
        _ => return None,
    };
    Some((name.to_owned(), outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_guest_report() {
        let text = "junk\r\n@@BEGIN\n@@KERNEL 5.10.0-43-cloud-amd64\n@@FACT lockdown [none] integrity confidentiality\n\
            @@SMOKE-BEGIN\nstderr: tracer: attached to sock:inet_sock_set_state\nstdout: {}\n@@SMOKE-END 0\n\
            @@BINARY /t/integration\nrunning 3 tests\ntest a::one ... ok\ntest a::two ... FAILED\n\
            test a::three ... ignored, needs X\n\nfailures:\n\n---- a::two stdout ----\nboom at line 3\n\n\
            failures:\n    a::two\n\ntest result: FAILED. 1 passed; 1 failed\n@@EXIT /t/integration 101\n@@END\n";
        let r = Report::parse(text);
        assert!(r.complete);
        assert_eq!(r.release.as_deref(), Some("5.10.0-43-cloud-amd64"));
        assert_eq!(r.fact("lockdown"), Some("[none] integrity confidentiality"));
        assert_eq!(r.smoke_rc, Some(0));
        assert!(r.attached());
        assert_eq!(r.hook(), None, "an older tracer's line names no hook");
        let fell_back = Report::parse(
            "@@BEGIN\n@@SMOKE-BEGIN\nstderr: tracer: attached to sock:inet_sock_set_state via tracepoint/sock/inet_sock_set_state (tp_btf refused: no BTF (really)); Ctrl-C to stop\n@@SMOKE-END 0\n@@END\n",
        );
        assert_eq!(
            fell_back.hook(),
            Some(("tracepoint".into(), Some("no BTF (really)".into())))
        );
        assert_eq!(
            r.tests,
            vec![
                ("a::one".to_owned(), Outcome::Passed),
                ("a::two".to_owned(), Outcome::Failed),
                (
                    "a::three".to_owned(),
                    Outcome::Skipped("needs X".to_owned())
                ),
            ]
        );
        assert_eq!(
            r.failure_output,
            vec![("a::two".to_owned(), "boom at line 3\n\n".to_owned())]
        );
        assert_eq!(r.bad_exits, vec![("/t/integration".to_owned(), 101)]);
    }

    #[test]
    fn an_early_stop_is_incomplete() {
        let r = Report::parse("@@BEGIN\n@@KERNEL 6.1\n@@SMOKE-BEGIN\n");
        assert!(!r.complete);
        assert_eq!(r.smoke_rc, None);
    }
}

//! `docs/schema.md` is the contract for every record: every field the tracer writes is
//! documented there, and every field documented there is written. Each record kind is written
//! through the tracer's own JSON writer (`JsonSink`); the document's field tables are parsed.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

use serde_json::Value;
use tracer::{
    analyze::{self, analyze},
    record::Record,
    sink::{JsonSink, Sink as _},
};

use crate::support::{self, fixture};

/// Record kinds absent from the export fixture, as the tracer writes them (a header with the
/// kernel's features, stuck-socket reports, a CLOSE_WAIT digest and a loss report). Every field is here, so a field added to the types without a default
/// fails to read: add it here and to docs/schema.md.
const EXTRA: [&str; 6] = [
    r#"{"type":"header","schema":1,"version":"0.1.0","hostname":"vm","kernel":"5.10.0-43-cloud-amd64","start_time":"2026-11-25T08:15:45.719949Z","monotonic_start_ns":1,"wall_offset_ns":1,"complete":true,"options":{"ports":[],"family":null,"all_protocols":false,"pids":[],"transitions":true,"timelines":false,"json":true,"close_wait_threshold_ns":1,"report_interval_ns":1,"duration_ns":null,"max_sockets":1,"ring_buffer_bytes":4096,"track_reads":false},"kernel_features":{"lockdown":"none","btf":true,"ring_buffer":true,"bpf_link":false,"recursion_misses":false,"tracepoints":["sock/inet_sock_set_state"],"missing_tracepoints":["sock/sock_recv_length"]}}"#,
    r#"{"type":"close_wait","ts_ns":1,"time":"2026-11-25T08:15:45.719949Z","skaddr":null,"pid":null,"comm":null,"fd":null,"family":"ipv4","laddr":"127.0.0.1","lport":80,"raddr":"127.0.0.1","rport":5000,"age_ms":1,"age_at_least":true,"recv_q":3,"fin_read":false,"tcp_info":{"last_data_recv_ms":5,"last_ack_recv_ms":4},"netns":4026531840,"holders":[],"unowned":{"reason":"accept_queue","listener":"127.0.0.1:80","listener_pid":7,"listener_comm":"srv"},"cgroup":"/","container":null,"pod_uid":null,"state":"CLOSE_WAIT","diagnosis":{"pid":7,"fds_open":812,"fds_limit":1024,"close_wait_held":790,"close_wait_per_minute":37.0,"fd_limit_in_s":343.0,"ports":{"raddr":"10.0.0.5","rport":5432,"ports_in_use":28000,"ports_range":28232,"ports_per_minute":120.0,"ports_exhausted_in_s":116.0},"threads_total":3,"thread_groups":[{"blocked_in":"futex wait","count":2},{"blocked_in":"recvfrom()","count":1}],"threads":[{"tid":9,"name":"worker-1","state":"S","blocked_in":"recvfrom()","syscall":"recvfrom","wchan":"wait_woken","fd":9,"fd_socket":{"laddr":"10.0.0.2","lport":51000,"raddr":"10.0.0.5","rport":5432,"state":"ESTABLISHED"},"fd_target":null,"on_stuck_socket":false,"pc":4096,"frames":[{"addr":4096,"function":"app::query","file":"src/db.rs","line":41,"module":"/srv/app"}],"stack_stop":"complete: reached the outermost frame","kernel_stack":["wait_woken"]}],"runtime":null,"unavailable":[{"field":"syscall","reason":"1 thread(s): unreadable"}],"last_read":{"age_ms":41000,"pid":7,"tid":9,"thread":"worker-1","bytes":5,"now_blocked_in":"recvfrom()"}}}"#,
    r#"{"type":"stuck","ts_ns":1,"time":"2026-11-25T08:15:45.719949Z","skaddr":"0x1","pid":7,"comm":"srv","fd":4,"family":"ipv4","laddr":"127.0.0.1","lport":80,"raddr":"127.0.0.1","rport":5000,"age_ms":1,"age_at_least":false,"recv_q":0,"netns":4026531840,"holders":[{"pid":7,"comm":"srv","fd":4}],"unowned":null,"cgroup":"/","container":null,"pod_uid":null,"state":"SYN_SENT","diagnosis":null}"#,
    r#"{"type":"stuck_resolved","ts_ns":1,"time":"2026-11-25T08:15:45.719949Z","skaddr":"0x1","pid":7,"comm":"srv","fd":4,"family":"ipv4","laddr":"127.0.0.1","lport":80,"raddr":"127.0.0.1","rport":5000,"stuck_ms":1,"stuck_at_least":false,"new_state":"CLOSE","netns":4026531840,"state":"SYN_SENT"}"#,
    r#"{"type":"digest","ts_ns":1,"time":"2026-11-25T08:15:45.719949Z","stuck":1,"processes":[{"pid":1,"comm":"x","count":1,"oldest_age_ms":5,"diagnosis":null}]}"#,
    r#"{"type":"lost","ts_ns":1,"time":"2026-11-25T08:15:45.719949Z","ringbuf":1,"recursion_misses":0}"#,
];

/// Every record kind, written by the tracer's JSON writer: the export fixture's records (header,
/// transitions, timelines, CLOSE_WAIT reports, summary), the two above, and the `analysis`
/// record `tracer analyze` writes for the fixture.
fn written() -> Vec<Value> {
    let mut records = support::records(&fs::read_to_string(fixture()).unwrap());
    for line in EXTRA {
        records.push(serde_json::from_str::<Record>(line).unwrap_or_else(|e| {
            panic!("{e}: a record type changed: update this line and docs/schema.md: {line}")
        }));
    }
    let mut sink = JsonSink::new(Vec::new());
    for record in &records {
        sink.write(record).unwrap();
    }
    let input = fs::read(fixture()).unwrap();
    let opts = analyze::Options {
        timelines: true,
        transitions: true,
        ..analyze::Options::default()
    };
    analyze(input.as_slice(), &opts, &mut sink, &mut |_| {}).expect("the fixture analyses");
    let out = String::from_utf8(sink.into_inner()).unwrap();
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Every key of `value`, at any depth (objects in arrays included).
fn keys(value: &Value, into: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                into.insert(key.clone());
                keys(inner, into);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| keys(v, into)),
        _ => {}
    }
}

/// The names between backticks in `text`.
fn backticked(text: &str) -> impl Iterator<Item = &str> {
    text.split('`').skip(1).step_by(2)
}

/// For each `### \`kind\`` section of the schema's "Records": the field names of its tables
/// (first column) and of the `{a, b, c}` object lists in their descriptions.
fn documented(schema: &str) -> BTreeMap<String, BTreeSet<String>> {
    let records = schema
        .split("\n## Records\n")
        .nth(1)
        .expect("docs/schema.md has a `## Records` section");
    let records = format!("\n{}", records.split("\n## ").next().unwrap());
    let mut kinds = BTreeMap::new();
    for section in records.split("\n### ").skip(1) {
        let (title, body) = section.split_once('\n').unwrap();
        let kind = backticked(title).next().expect("a `kind` title").to_owned();
        let mut fields = BTreeSet::new();
        for row in body.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split('|').collect();
            fields.extend(backticked(cells[1]).map(str::to_owned));
            for list in cells[3..].iter().flat_map(|c| c.split('{').skip(1)) {
                let list = list.split('}').next().unwrap();
                fields.extend(list.split(',').map(|f| f.trim().to_owned()));
            }
        }
        kinds.insert(kind, fields);
    }
    kinds
}

#[test]
fn every_written_field_is_documented_and_every_documented_field_is_written() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schema.md");
    let documented = documented(&fs::read_to_string(&path).unwrap());
    let mut written_kinds: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for record in written() {
        let kind = record["type"].as_str().expect("a type").to_owned();
        let fields = written_kinds.entry(kind).or_default();
        keys(&record, fields);
        fields.remove("type");
    }
    let kinds: BTreeSet<&String> = documented.keys().chain(written_kinds.keys()).collect();
    let mut problems = Vec::new();
    for kind in kinds {
        let (Some(doc), Some(code)) = (documented.get(kind), written_kinds.get(kind)) else {
            problems.push(format!(
                "record `{kind}`: {}",
                if documented.contains_key(kind) {
                    "documented but never written (add it to this test's records)"
                } else {
                    "written but has no `### `{kind}`` section in docs/schema.md"
                }
            ));
            continue;
        };
        for field in code.difference(doc) {
            problems.push(format!(
                "record `{kind}`: field `{field}` is written but not documented"
            ));
        }
        for field in doc.difference(code) {
            problems.push(format!(
                "record `{kind}`: field `{field}` is documented but never written"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/schema.md and the record types disagree:\n{}",
        problems.join("\n")
    );
}

/// The parser reads the document's shapes: a table row with several fields, and a list of an
/// array's object fields in a description.
#[test]
fn the_schema_parser_reads_rows_and_object_lists() {
    let doc = "# x\n## Records\n### `digest`\n\n| field | type | meaning |\n| --- | --- | --- |\n\
               | `ts_ns`, `time` | | when. |\n| `processes` | array | `{pid, comm}`, most first. |\n\
               ## Reading\n| `not_a_field` | | |\n";
    let kinds = documented(doc);
    let fields: Vec<&str> = kinds["digest"].iter().map(String::as_str).collect();
    assert_eq!(fields, ["comm", "pid", "processes", "time", "ts_ns"]);
}

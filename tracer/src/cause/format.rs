//! Reads a tracefs `format` file (`/sys/kernel/tracing/events/<category>/<name>/format`) and
//! checks that the fields an eBPF program reads sit where it reads them.

use std::collections::HashMap;

use tracer_common::tracepoint::Field;

/// `(offset, size)` of each field of a `format` file, by name. Lines look like
/// `\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;`; malformed lines are skipped.
pub fn parse(format: &str) -> HashMap<String, (usize, usize)> {
    let mut fields = HashMap::new();
    for line in format.lines() {
        let Some(rest) = line.trim().strip_prefix("field:") else {
            continue;
        };
        let parts: Vec<&str> = rest.split(';').map(str::trim).collect();
        let name = parts[0]
            .rsplit([' ', '*'])
            .next()
            .unwrap_or_default()
            .split('[')
            .next()
            .unwrap_or_default();
        let value = |key: &str| -> Option<usize> {
            parts
                .iter()
                .find_map(|p| p.strip_prefix(key))
                .and_then(|v| v.parse().ok())
        };
        if let (Some(offset), Some(size)) = (value("offset:"), value("size:")) {
            fields.insert(name.to_owned(), (offset, size));
        }
    }
    fields
}

/// What differs between the fields a program reads and a `format` file, one phrase per field
/// (empty when they agree).
pub fn mismatches(expected: &[Field], format: &str) -> Vec<String> {
    let kernel = parse(format);
    expected
        .iter()
        .filter_map(|f| match kernel.get(f.name) {
            None => Some(format!("no field `{}`", f.name)),
            Some(&(offset, size)) if (offset, size) != (f.offset, f.size) => Some(format!(
                "field `{}` at offset {offset}, size {size} (the program reads offset {}, size {})",
                f.name, f.offset, f.size
            )),
            Some(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use tracer_common::cause::{error_report, receive_reset, send_reset};

    use super::mismatches;

    const HEADER: &str =
        "format:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n";

    /// Linux 6.18's records (`format` files read on the development machine).
    #[test]
    fn the_offsets_match_linux_6_18() {
        let send = format!(
            "{HEADER}\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
             \tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;\n\
             \tfield:int state;\toffset:24;\tsize:4;\tsigned:1;\n\
             \tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;\n\
             \tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;\n"
        );
        assert_eq!(mismatches(&send_reset::FIELDS, &send), Vec::<String>::new());
        let receive = format!(
            "{HEADER}\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
             \tfield:__u16 sport;\toffset:16;\tsize:2;\tsigned:0;\n"
        );
        assert_eq!(
            mismatches(&receive_reset::FIELDS, &receive),
            Vec::<String>::new()
        );
        let error = format!(
            "{HEADER}\tfield:int error;\toffset:8;\tsize:4;\tsigned:1;\n\
             \tfield:__u16 sport;\toffset:12;\tsize:2;\tsigned:0;\n\
             \tfield:__u16 dport;\toffset:14;\tsize:2;\tsigned:0;\n\
             \tfield:__u16 family;\toffset:16;\tsize:2;\tsigned:0;\n\
             \tfield:__u16 protocol;\toffset:18;\tsize:2;\tsigned:0;\n\
             \tfield:__u8 saddr[4];\toffset:20;\tsize:4;\tsigned:0;\n\
             \tfield:__u8 daddr[4];\toffset:24;\tsize:4;\tsigned:0;\n\
             \tfield:__u8 saddr_v6[16];\toffset:28;\tsize:16;\tsigned:0;\n\
             \tfield:__u8 daddr_v6[16];\toffset:44;\tsize:16;\tsigned:0;\n"
        );
        assert_eq!(
            mismatches(&error_report::FIELDS, &error),
            Vec::<String>::new()
        );
        let moved = error.replace("dport;\toffset:14;", "dport;\toffset:16;");
        assert_eq!(
            mismatches(&error_report::FIELDS, &moved),
            ["field `dport` at offset 16, size 2 (the program reads offset 14, size 2)"]
        );
        assert_eq!(
            mismatches(&receive_reset::FIELDS, HEADER),
            ["no field `skaddr`"]
        );
    }
}

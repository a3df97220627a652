//! What RabbitMQ's CLI tools print: an informational banner (not with `-q`), then a listing as
//! tab-separated columns under a header (none with `-s`) or as a JSON array of objects with the
//! columns asked for as keys (`--formatter json`), and values as rabbitmqctl shows them.

use serde_json::{Map, Value};

use super::args::{Formatter, Line};

/// Writes one line to standard output; exits (0) if nobody reads it any more.
pub fn say(line: std::fmt::Arguments) {
    use std::io::Write as _;
    if writeln!(std::io::stdout().lock(), "{line}").is_err() {
        std::process::exit(0);
    }
}

/// Prints the banner unless quiet (never before JSON, which tools parse whole).
pub fn banner(line: &Line, text: &str) {
    if !line.quiet && line.formatter == Formatter::Table {
        say!("{text}");
    }
}

/// Prints `rows` (objects) under `columns`.
pub fn rows(line: &Line, columns: &[String], rows: &[Map<String, Value>]) {
    match line.formatter {
        Formatter::Json => {
            let out: Vec<Value> = rows
                .iter()
                .map(|r| {
                    Value::Object(
                        columns
                            .iter()
                            .map(|c| (c.clone(), r.get(c).cloned().unwrap_or(Value::Null)))
                            .collect(),
                    )
                })
                .collect();
            say!("{}", Value::Array(out));
        }
        Formatter::Table => {
            if !line.silent {
                say!("{}", columns.join("\t"));
            }
            for r in rows {
                let cells: Vec<String> = columns
                    .iter()
                    .map(|c| cell(r.get(c).unwrap_or(&Value::Null)))
                    .collect();
                say!("{}", cells.join("\t"));
            }
        }
    }
}

/// Prints one object: as JSON, or as `key<TAB>value` lines.
pub fn object(line: &Line, value: &Map<String, Value>) {
    match line.formatter {
        Formatter::Json => say!("{}", Value::Object(value.clone())),
        Formatter::Table => {
            for (k, v) in value {
                say!("{k}\t{}", cell(v));
            }
        }
    }
}

/// A value as rabbitmqctl's table shows it: lists as `[a, b]`, tables as JSON, nothing for null.
/// Control characters are escaped so no value can break a row.
pub fn cell(v: &Value) -> String {
    let text = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(cell).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    };
    text.chars()
        .map(|c| match c {
            '\t' => "\\t".to_string(),
            '\n' => "\\n".to_string(),
            '\r' => "\\r".to_string(),
            c if warren_storage::names::is_invisible(c) => format!("\\u{{{:x}}}", u32::from(c)),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_read_as_rabbitmqctl_prints_them() {
        assert_eq!(
            cell(&json!(["administrator", "monitoring"])),
            "[administrator, monitoring]"
        );
        assert_eq!(cell(&json!(true)), "true");
        assert_eq!(cell(&json!(null)), "");
        assert_eq!(cell(&json!("a\tb\nc")), "a\\tb\\nc");
        assert_eq!(
            cell(&json!({"x-queue-type": "quorum"})),
            "{\"x-queue-type\":\"quorum\"}"
        );
    }
}

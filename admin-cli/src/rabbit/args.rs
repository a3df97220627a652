//! RabbitMQ's command lines as its CLI tools read them: global flags and a command's own options
//! anywhere on the line (`rabbitmqctl list_queues --silent name type --formatter json`), short
//! flags with their value in the next word, long ones with it there or after `=`.

/// How results are printed (`--formatter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Formatter {
    /// Tab-separated columns (rabbitmqctl's default for listings).
    Table,
    Json,
}

/// A parsed command line.
#[derive(Debug, Clone)]
pub struct Line {
    /// The command and its positional arguments.
    pub words: Vec<String>,
    /// `-q`: no informational banner.
    pub quiet: bool,
    /// `-s`: no banner and no table header.
    pub silent: bool,
    pub formatter: Formatter,
    /// `-p`: the vhost (default `/`).
    pub vhost: Option<String>,
    /// `-t`: seconds (RabbitMQ: the operation's timeout; `wait --timeout`).
    pub timeout: Option<u64>,
    /// The command's own options: `--priority`, `--apply-to`, … (name without dashes, value).
    pub options: Vec<(String, String)>,
    /// `--version`.
    pub version: bool,
}

/// Flags that take a value; the rest are switches.
const VALUED: &[&str] = &[
    "formatter",
    "vhost",
    "node",
    "timeout",
    "priority",
    "apply-to",
    "erlang-cookie",
    "description",
    "tags",
    "default-queue-type",
    "aliases-file",
];

/// Switches accepted and ignored (they concern Erlang nodes and distribution).
const IGNORED_SWITCHES: &[&str] = &["longnames", "offline", "online", "no-table-headers"];

impl Line {
    /// Reads `args` (without the program name); Err is a usage error.
    pub fn parse(args: &[String]) -> Result<Line, String> {
        let mut line = Line {
            words: Vec::new(),
            quiet: false,
            silent: false,
            formatter: Formatter::Table,
            vhost: None,
            timeout: None,
            options: Vec::new(),
            version: false,
        };
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            i += 1;
            let (name, inline) = if let Some(long) = arg.strip_prefix("--") {
                match long.split_once('=') {
                    Some((n, v)) => (n.to_string(), Some(v.to_string())),
                    None => (long.to_string(), None),
                }
            } else if arg.len() == 2 && arg.starts_with('-') && arg != "--" {
                let long = match &arg[1..] {
                    "q" => "quiet",
                    "s" => "silent",
                    "p" => "vhost",
                    "n" => "node",
                    "t" => "timeout",
                    "l" => "longnames",
                    "c" => "erlang-cookie",
                    "e" => "if-empty",
                    "u" => "if-unused",
                    other => return Err(format!("invalid option -{other}")),
                };
                (long.to_string(), None)
            } else {
                line.words.push(arg.clone());
                continue;
            };
            if name.is_empty() {
                line.words.extend(args[i..].iter().cloned());
                break;
            }
            let value = if VALUED.contains(&name.as_str()) {
                match inline {
                    Some(v) => Some(v),
                    None if i < args.len() => {
                        i += 1;
                        Some(args[i - 1].clone())
                    }
                    None => return Err(format!("option --{name} needs a value")),
                }
            } else {
                None
            };
            match (name.as_str(), value) {
                ("quiet", None) => line.quiet = true,
                ("silent", None) => line.silent = true,
                ("version", None) => line.version = true,
                ("formatter", Some(v)) => {
                    line.formatter = match v.as_str() {
                        "json" => Formatter::Json,
                        "table" | "pretty_table" | "plain" => Formatter::Table,
                        other => return Err(format!("unsupported formatter: {other}")),
                    }
                }
                ("vhost", Some(v)) => line.vhost = Some(v),
                ("node", Some(_)) | ("erlang-cookie", Some(_)) | ("aliases-file", Some(_)) => {}
                ("timeout", Some(v)) => {
                    let seconds = v
                        .parse::<f64>()
                        .ok()
                        .filter(|s| *s >= 0.0)
                        .ok_or_else(|| format!("invalid timeout: {v}"))?;
                    line.timeout = Some(seconds.ceil() as u64);
                }
                (other, Some(v)) => line.options.push((other.to_string(), v)),
                (other, None) if IGNORED_SWITCHES.contains(&other) => {}
                (other, None) => line.options.push((other.to_string(), String::new())),
            }
        }
        if line.silent {
            line.quiet = true;
        }
        Ok(line)
    }

    pub fn vhost(&self) -> &str {
        self.vhost.as_deref().unwrap_or("/")
    }

    pub fn option(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The command's positional arguments (after the command).
    pub fn args(&self) -> &[String] {
        self.words.get(1..).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Line {
        let args: Vec<String> = line.split_whitespace().map(String::from).collect();
        Line::parse(&args).unwrap()
    }

    #[test]
    fn flags_anywhere_and_the_columns_in_order() {
        let l = parse("list_queues --silent name type --formatter json -p /x -n rabbit@h");
        assert_eq!(l.words, ["list_queues", "name", "type"]);
        assert!(l.silent && l.quiet);
        assert_eq!(l.formatter, Formatter::Json);
        assert_eq!(l.vhost(), "/x");
        let l = parse("-q set_policy --priority=2 --apply-to queues ttl ^a {} -t 5");
        assert_eq!(l.option("priority"), Some("2"));
        assert_eq!(l.option("apply-to"), Some("queues"));
        assert_eq!(l.args(), ["ttl", "^a", "{}"]);
        assert_eq!(l.timeout, Some(5));
        assert!(l.quiet && !l.silent);
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert!(Line::parse(&args("list_queues --formatter")).is_err());
        assert!(Line::parse(&args("list_queues --formatter xml")).is_err());
        assert!(Line::parse(&args("list_queues -z")).is_err());
        assert!(Line::parse(&args("wait -t never")).is_err());
    }
}

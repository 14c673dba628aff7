//! A small command-line parser for the examples (no dependency): `--name value`,
//! `--name=value`, switches and repeatable flags, `--help`, and a clear message with exit
//! status 2 for anything else.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::process;
use std::str::FromStr;
use std::time::Duration;

/// One flag a program accepts.
struct Flag {
    name: &'static str,
    /// The placeholder of its value (`PORT`); `None` for a switch.
    value: Option<&'static str>,
    default: Option<&'static str>,
    help: &'static str,
    /// May be given more than once; every value is kept, in order.
    repeated: bool,
}

/// A program's flags, built with [`flag`](Self::flag) and [`switch`](Self::switch).
pub(crate) struct Cli {
    program: &'static str,
    about: &'static str,
    flags: Vec<Flag>,
}

/// What [`Cli::parse_from`] decided instead of returning the flags.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// `--help`: the usage text, for stdout, exit 0.
    Help(String),
    /// A bad command line: the message, for stderr, exit 2.
    Usage(String),
}

impl Cli {
    pub(crate) fn new(program: &'static str, about: &'static str) -> Self {
        Self {
            program,
            about,
            flags: Vec::new(),
        }
    }

    /// A flag with a value; `default` is used when it is not given.
    pub(crate) fn flag(
        mut self,
        name: &'static str,
        value: &'static str,
        default: Option<&'static str>,
        help: &'static str,
    ) -> Self {
        self.flags.push(Flag {
            name,
            value: Some(value),
            default,
            help,
            repeated: false,
        });
        self
    }

    /// A flag with a value that may be given any number of times (no default); read
    /// with [`Args::all`].
    pub(crate) fn repeated(
        mut self,
        name: &'static str,
        value: &'static str,
        help: &'static str,
    ) -> Self {
        self.flags.push(Flag {
            name,
            value: Some(value),
            default: None,
            help,
            repeated: true,
        });
        self
    }

    /// A flag without a value.
    pub(crate) fn switch(mut self, name: &'static str, help: &'static str) -> Self {
        self.flags.push(Flag {
            name,
            value: None,
            default: None,
            help,
            repeated: false,
        });
        self
    }

    /// The usage text.
    pub(crate) fn usage(&self) -> String {
        let mut text = format!(
            "{}\n\nUsage: {} [FLAGS]\n\nFlags:\n",
            self.about, self.program
        );
        let left = |flag: &Flag| match flag.value {
            Some(value) => format!("--{} {value}", flag.name),
            None => format!("--{}", flag.name),
        };
        let width = self
            .flags
            .iter()
            .map(|f| left(f).len())
            .max()
            .unwrap_or(0)
            .max("--help".len());
        for flag in &self.flags {
            let _ = write!(text, "  {:width$}  {}", left(flag), flag.help);
            if let Some(default) = flag.default {
                let _ = write!(text, " [default: {default}]");
            }
            if flag.repeated {
                text.push_str(" (repeatable)");
            }
            text.push('\n');
        }
        let _ = writeln!(text, "  {:width$}  print this help", "--help");
        text
    }

    /// Parses the process's arguments; prints the usage and exits 0 for `--help`, prints
    /// the problem and exits 2 for a bad command line.
    pub(crate) fn parse(self) -> Args {
        match self.parse_from(std::env::args().skip(1)) {
            Ok(args) => args,
            Err(Exit::Help(text)) => {
                print!("{text}");
                process::exit(0);
            }
            Err(Exit::Usage(message)) => usage_exit(self.program, &message),
        }
    }

    /// Parses `args` (without the program name).
    pub(crate) fn parse_from(&self, args: impl IntoIterator<Item = String>) -> Result<Args, Exit> {
        let mut values = HashMap::new();
        let mut lists: HashMap<&'static str, Vec<String>> = HashMap::new();
        let mut switches = HashSet::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "--help" || arg == "-h" {
                return Err(Exit::Help(self.usage()));
            }
            let Some(body) = arg.strip_prefix("--") else {
                return Err(Exit::Usage(format!(
                    "unexpected argument '{arg}' (flags start with --)"
                )));
            };
            let (name, inline) = match body.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (body, None),
            };
            let Some(flag) = self.flags.iter().find(|f| f.name == name) else {
                return Err(Exit::Usage(format!("unknown flag --{name}")));
            };
            match flag.value {
                None => {
                    if inline.is_some() {
                        return Err(Exit::Usage(format!("--{name} takes no value")));
                    }
                    switches.insert(flag.name);
                }
                Some(placeholder) => {
                    let value = match inline {
                        Some(value) => value,
                        None => args.next().ok_or_else(|| {
                            Exit::Usage(format!("--{name} needs a value ({placeholder})"))
                        })?,
                    };
                    if flag.repeated {
                        lists.entry(flag.name).or_default().push(value);
                    } else if values.insert(flag.name, value).is_some() {
                        return Err(Exit::Usage(format!("--{name} given twice")));
                    }
                }
            }
        }
        for flag in &self.flags {
            if let (Some(default), false) = (flag.default, values.contains_key(flag.name)) {
                values.insert(flag.name, default.to_owned());
            }
        }
        Ok(Args {
            program: self.program,
            values,
            lists,
            switches,
        })
    }
}

/// Prints `message` and a pointer to `--help` on stderr, and exits with status 2.
pub(crate) fn usage_exit(program: &str, message: &str) -> ! {
    eprintln!("{program}: {message}\nRun '{program} --help' for usage.");
    process::exit(2)
}

/// Parsed flags. The getters exit with status 2 when a value does not parse.
#[derive(Debug)]
pub(crate) struct Args {
    program: &'static str,
    values: HashMap<&'static str, String>,
    /// The values of repeatable flags, in the order given.
    lists: HashMap<&'static str, Vec<String>>,
    switches: HashSet<&'static str>,
}

impl Args {
    /// Whether a switch was given.
    pub(crate) fn switch(&self, name: &str) -> bool {
        self.switches.contains(name)
    }

    /// The raw value of a flag, or its default; `None` if neither.
    pub(crate) fn opt(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Every value of a repeatable flag, in the order given; empty if it was not given.
    pub(crate) fn all(&self, name: &str) -> &[String] {
        self.lists.get(name).map_or(&[], Vec::as_slice)
    }

    /// Whether the flag was given or has a default.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// The value of a flag that has a default (or was required by the caller), parsed.
    pub(crate) fn get<T: FromStr>(&self, name: &str) -> T
    where
        T::Err: std::fmt::Display,
    {
        let Some(text) = self.opt(name) else {
            self.fail(&format!("--{name} is required"));
        };
        text.parse()
            .unwrap_or_else(|err| self.fail(&format!("bad value '{text}' for --{name}: {err:#}")))
    }

    /// A duration flag: `500ms`, `10s`, `2m`, or a number of seconds.
    pub(crate) fn duration(&self, name: &str) -> Duration {
        let Some(text) = self.opt(name) else {
            self.fail(&format!("--{name} is required"));
        };
        parse_duration(text)
            .unwrap_or_else(|err| self.fail(&format!("bad value '{text}' for --{name}: {err:#}")))
    }

    /// Exits with status 2 and `message`.
    pub(crate) fn fail(&self, message: &str) -> ! {
        usage_exit(self.program, message)
    }
}

/// `500ms`, `10s`, `2m`, `1.5s`, or a plain number of seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| "expected a number with an optional unit: 500ms, 10s, 2m".to_owned())?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" | "min" => number * 60.0,
        other => return Err(format!("unknown unit '{other}' (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> Cli {
        Cli::new("prog", "A program.")
            .flag("port", "PORT", Some("7077"), "the port")
            .flag("id", "ID", None, "the id")
            .switch("client-mode", "no listener")
            .repeated("conf", "KEY=VALUE", "a setting")
    }

    fn parse(args: &[&str]) -> Result<Args, Exit> {
        cli().parse_from(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn values_switches_and_defaults() {
        let args = parse(&["--id", "w1", "--client-mode"]).unwrap();
        assert_eq!(args.get::<u16>("port"), 7077);
        assert_eq!(args.opt("id"), Some("w1"));
        assert!(args.switch("client-mode"));
        let args = parse(&["--port=0"]).unwrap();
        assert_eq!(args.get::<u16>("port"), 0);
        assert!(!args.has("id"));
    }

    #[test]
    fn bad_command_lines() {
        assert!(matches!(parse(&["--nope"]), Err(Exit::Usage(m)) if m.contains("--nope")));
        assert!(matches!(parse(&["--id"]), Err(Exit::Usage(m)) if m.contains("needs a value")));
        assert!(matches!(parse(&["stray"]), Err(Exit::Usage(_))));
        assert!(matches!(parse(&["--help"]), Err(Exit::Help(t)) if t.contains("--port PORT")));
    }

    #[test]
    fn repeated_flags_keep_every_value_in_order() {
        let args = parse(&["--conf", "a=1", "--id", "w1", "--conf=b=2", "--conf", "a=3"]).unwrap();
        assert_eq!(args.all("conf"), ["a=1", "b=2", "a=3"]);
        assert!(!args.has("conf"));
        assert!(parse(&[]).unwrap().all("conf").is_empty());
        assert!(matches!(parse(&["--conf"]), Err(Exit::Usage(m)) if m.contains("needs a value")));
        // Other flags still take one value.
        assert!(
            matches!(parse(&["--id", "a", "--id", "b"]), Err(Exit::Usage(m)) if m.contains("given twice"))
        );
        assert!(
            matches!(parse(&["--help"]), Err(Exit::Help(t)) if t.contains("--conf KEY=VALUE") && t.contains("(repeatable)"))
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5h").is_err());
    }
}

//! The command-line pieces the node examples share, on `clap` (derive): the flags every
//! node takes (`--secret-file`, `--conf`), durations (`500ms`, `10s`, `2m`), and usage
//! errors after parsing in clap's form (`error: …`, a pointer to `--help`, exit status 2).

use std::time::Duration;

use clap::CommandFactory;
use clap::error::ErrorKind;

/// The help of the repeatable `--conf KEY=VALUE` flag of the nodes.
pub(crate) const CONF_HELP: &str =
    "an rpcenv setting for the node's env, e.g. --conf rpc.io.connectionTimeout=2s (repeatable)";

/// The help of `--secret-file`.
pub(crate) const SECRET_HELP: &str = "authenticate every connection with the secret in this \
     file (Base64 of its bytes, as Spark's spark.authenticate.secret.file) and encrypt it \
     with AES-GCM; every node of the cluster needs the same file";

/// The flags every node takes for its env's settings.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct RpcFlags {
    #[arg(long, value_name = "PATH", help = SECRET_HELP)]
    pub(crate) secret_file: Option<String>,
    #[arg(long = "conf", value_name = "KEY=VALUE", help = CONF_HELP)]
    pub(crate) conf: Vec<String>,
}

/// Ends the program as clap ends it for a bad command line: `error: MESSAGE`, the usage
/// line, a pointer to `--help` on stderr, exit status 2. For the checks clap cannot make
/// itself (a value out of range, settings the library rejects).
pub(crate) fn fail<C: CommandFactory>(message: &str) -> ! {
    C::command()
        .error(ErrorKind::ValueValidation, message)
        .exit()
}

/// `500ms`, `10s`, `2m`, `1.5s`, or a plain number of seconds (a clap value parser).
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
    use clap::Parser;

    #[derive(Debug, Parser)]
    #[command(name = "prog", about = "A program.")]
    struct Prog {
        #[arg(long, default_value_t = 7077)]
        port: u16,
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        client_mode: bool,
        #[arg(long, value_parser = parse_duration)]
        wait: Option<Duration>,
        #[command(flatten)]
        rpc: RpcFlags,
    }

    fn parse(args: &[&str]) -> Result<Prog, clap::Error> {
        Prog::try_parse_from(std::iter::once("prog").chain(args.iter().copied()))
    }

    #[test]
    fn values_switches_and_defaults() {
        let args = parse(&["--id", "w1", "--client-mode", "--wait", "250ms"]).unwrap();
        assert_eq!(args.port, 7077);
        assert_eq!(args.id.as_deref(), Some("w1"));
        assert!(args.client_mode);
        assert_eq!(args.wait, Some(Duration::from_millis(250)));
        let args = parse(&["--port=0"]).unwrap();
        assert_eq!(args.port, 0);
        assert!(args.id.is_none());
    }

    #[test]
    fn bad_command_lines() {
        let kind = |args: &[&str]| parse(args).unwrap_err().kind();
        assert_eq!(kind(&["--nope"]), ErrorKind::UnknownArgument);
        assert_eq!(kind(&["--id"]), ErrorKind::InvalidValue);
        assert_eq!(kind(&["stray"]), ErrorKind::UnknownArgument);
        assert_eq!(kind(&["--port", "x"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["--wait", "soon"]), ErrorKind::ValueValidation);
        let help = parse(&["--help"]).unwrap_err();
        assert_eq!(help.kind(), ErrorKind::DisplayHelp);
        let text = help.to_string();
        assert!(text.contains("--port <PORT>"), "{text}");
        assert!(text.contains("--conf <KEY=VALUE>"), "{text}");
    }

    #[test]
    fn repeated_conf_keeps_every_value_in_order() {
        let args = parse(&["--conf", "a=1", "--id", "w1", "--conf=b=2", "--conf", "a=3"]).unwrap();
        assert_eq!(args.rpc.conf, ["a=1", "b=2", "a=3"]);
        assert!(parse(&[]).unwrap().rpc.conf.is_empty());
        assert!(parse(&["--id", "a", "--id", "b"]).is_err());
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

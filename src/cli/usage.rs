//! Reading the command line: a bad or missing setting ends the process with exit code 2 and one
//! line that names where the value came from.

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser};

use super::Cli;

impl Cli {
    /// Reads the command line and the environment. A bad value ends the process with exit
    /// code 2 and one line naming where it came from: the environment variable when it was not
    /// given as a flag (a Deployment sets variables, not flags), and never the value of a secret.
    pub fn parse_or_exit() -> Self {
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        Self::try_parse_from(&args).unwrap_or_else(|err| match bad_value_message(&err, &args) {
            Some(line) => {
                eprintln!("{line}");
                std::process::exit(2);
            }
            None => err.exit(),
        })
    }
}

/// For a value that failed its parser, `error: invalid value 'v' for REVIEWS_X (--x): why`; for
/// a missing setting, the flag and the variable that can give it.
pub(super) fn bad_value_message(err: &clap::Error, args: &[std::ffi::OsString]) -> Option<String> {
    let cmd = Cli::command();
    let find = |shown: &str| {
        let long = shown
            .strip_prefix("--")?
            .split([' ', '='])
            .next()?
            .to_owned();
        let arg = cmd
            .get_subcommands()
            .flat_map(|c| c.get_arguments())
            .find(|a| a.get_long() == Some(long.as_str()))?;
        Some((format!("--{long}"), arg))
    };
    if err.kind() == ErrorKind::MissingRequiredArgument {
        let Some(ContextValue::Strings(missing)) = err.get(ContextKind::InvalidArg) else {
            return None;
        };
        let named: Vec<String> = missing
            .iter()
            .map(
                |shown| match find(shown).and_then(|(f, a)| Some((f, a.get_env()?))) {
                    Some((flag, env)) => format!("{flag} (or {})", env.to_string_lossy()),
                    None => shown.clone(),
                },
            )
            .collect();
        return Some(format!("error: missing {}", named.join(", ")));
    }
    if err.kind() != ErrorKind::ValueValidation {
        return None;
    }
    let Some(ContextValue::String(shown)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    let (flag, arg) = find(shown)?;
    let given_as_flag = args.iter().filter_map(|a| a.to_str()).any(|a| {
        a == flag
            || a.strip_prefix(flag.as_str())
                .is_some_and(|rest| rest.starts_with('='))
    });
    let source = match arg.get_env() {
        Some(env) if !given_as_flag => format!("{} ({flag})", env.to_string_lossy()),
        _ => flag,
    };
    let value = match err.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) if !arg.is_hide_env_values_set() => format!(" '{v}'"),
        _ => String::new(),
    };
    let reason = std::error::Error::source(err).map_or_else(String::new, |e| format!(": {e}"));
    Some(format!("error: invalid value{value} for {source}{reason}"))
}

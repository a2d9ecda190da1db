//! Logs: `--log-format text|json`, `-v` for more. `RUST_LOG` overrides the
//! level filter.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (time, level, target, fields).
    Json,
}

/// The logging flags every component takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Log line format.
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub log_format: Format,
    /// More detail: -v debug, -vv trace (default info).
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

/// The filter for a verbosity: hickory logs every query at info (two lines
/// a request), so it stays at warn unless asked for with -vv.
pub fn filter(verbose: u8) -> String {
    match verbose {
        0 => "info,hickory_server=warn,hickory_proto=warn".into(),
        1 => {
            "debug,hickory_server=warn,hickory_proto=warn,hyper=info,rustls=info,tower=info".into()
        }
        _ => "trace".into(),
    }
}

/// Installs the global subscriber.
pub fn init(args: &Args) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter(args.verbose)));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format {
        Format::Text => builder.init(),
        Format::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

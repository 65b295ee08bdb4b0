//! The `rift` command line: operator commands over the store, with kubectl's habits.

mod agent;
mod apply;
mod artifact;
mod bench;
mod certs;
mod columns;
mod completion;
pub mod config;
mod cordon;
mod crds;
mod dashboard;
mod delete;
mod describe;
mod edit;
mod error;
mod explain;
mod get;
mod import;
mod jsonpath;
mod logs;
mod modify;
mod output;
mod printer;
mod sim;
mod status;
mod token;
mod top;
mod up;
mod version;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use error::CliError;
/// `4.0 KiB`: byte counts as people read them (also in the agent's staging and upload messages).
pub(crate) use printer::human_bytes;

use crate::store::Store;

/// rift: a declarative control plane for GPU training clusters, built on etcd.
#[derive(Debug, Parser)]
#[command(name = "rift", version, about, propagate_version = true)]
pub struct Cli {
    /// etcd client URLs, comma-separated [default: those in RIFT_CONFIG].
    #[arg(long, global = true, env = "RIFT_ENDPOINTS", value_delimiter = ',')]
    pub endpoints: Vec<String>,

    /// Talk plain http:// to a plaintext cluster, without credentials (clusters not yet moved
    /// to TLS; never the default).
    #[arg(long, global = true, env = "RIFT_INSECURE", value_parser = clap::builder::FalseyValueParser::new())]
    pub insecure: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update objects from YAML manifests (all or nothing).
    Apply(apply::ApplyArgs),
    /// List objects of a kind, or show one.
    Get(get::GetArgs),
    /// Show one object in detail, with its recent events.
    Describe(describe::DescribeArgs),
    /// Delete objects by name or by manifest.
    Delete(delete::DeleteArgs),
    /// Edit one object in your editor ($RIFT_EDITOR, $EDITOR or vi); written back with
    /// compare-and-swap, reopened on invalid input.
    Edit(edit::EditArgs),
    /// Set or remove labels: `rift label node gh200-a gpu=gh200 spot-`.
    Label(modify::MetaArgs),
    /// Set or remove annotations: `rift annotate job train note="rerun after fix"`.
    Annotate(modify::MetaArgs),
    /// Set a Pool's replicas: `rift scale pool selfplay --replicas 8`.
    Scale(modify::ScaleArgs),
    /// What a kind or a field is, from its schema: `rift explain job.spec.resources`.
    Explain(explain::ExplainArgs),
    /// Each node's CPU, memory and per-GPU use: `rift top nodes`.
    Top(top::TopArgs),
    /// This client's version, and the cluster's etcd version and id.
    Version(version::VersionArgs),
    /// Print the JSON Schema of every kind (for editors and review).
    Crds(crds::CrdsArgs),
    /// Leader, voters and quorum, nodes, jobs by phase.
    Status(status::StatusArgs),
    /// Serve a live, read-only web view of the cluster (default http://127.0.0.1:8780/).
    Dashboard(dashboard::DashboardArgs),
    /// Print a job's output, from the agent of the node it runs on (-f to follow).
    Logs(logs::LogsArgs),
    /// Start a one-machine cluster in the foreground: etcd, an agent that leads, manifests.
    Up(up::UpArgs),
    /// Run the node agent (on every node; with --controllers it may lead).
    Agent(Box<agent::AgentArgs>),
    /// Mark a node unschedulable: no new jobs are placed there.
    Cordon(cordon::NodeArgs),
    /// Make a cordoned node schedulable again.
    Uncordon(cordon::NodeArgs),
    /// Cordon a node and move its jobs elsewhere (--wait to follow until it is empty).
    Drain(cordon::DrainArgs),
    /// Convert the old orchestrator's files into rift manifests (`rift import hosts FILE`).
    Import(import::ImportArgs),
    /// Print a shell completion script: `rift completion bash|zsh|fish`.
    Completion(completion::CompletionArgs),
    /// Join tokens for new nodes: `rift token create --role worker|controller`, list, revoke.
    Token(token::TokenArgs),
    /// This cluster's certificates: `rift certs check` shows expiry; `revoke NODE`.
    Certs(certs::CertsArgs),
    /// Artifacts' bytes: `rift artifact push FILE -l type=model`, `pull NAME -o FILE`.
    Artifact(artifact::ArtifactArgs),
    /// Run a benchmark scenario (starts its own etcd, agents and hollow nodes).
    Bench(bench::BenchArgs),
    /// Run N hollow nodes (simulated agents) against etcd, for scale tests.
    Sim(sim::SimArgs),
    /// Parent one job attempt (started by the agent; not for people).
    #[command(hide = true)]
    Shim(ShimArgs),
}

/// `rift shim`: arguments the agent passes.
#[derive(Debug, clap::Args)]
pub struct ShimArgs {
    /// The job's state directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// The attempt to run.
    #[arg(long)]
    pub attempt: u32,
    /// The agent's heartbeat file.
    #[arg(long)]
    pub heartbeat: PathBuf,
    /// Start the job as this user (the node's `runAs`).
    #[arg(long)]
    pub run_as: Option<String>,
    /// Where the job's `envFrom` files live (the node's `secretsDir`).
    #[arg(long, default_value = crate::agent::jobs::env_files::DEFAULT_SECRETS_DIR)]
    pub secrets_dir: PathBuf,
}

/// Parses the command line, runs the command and turns any error into a message and exit 1.
pub fn run() -> ExitCode {
    crate::alloc::tune();
    let cli = Cli::parse();
    if let Command::Shim(args) = &cli.command {
        // No async runtime and no tracing subscriber: the shim stays small.
        let options = crate::agent::jobs::shim::ShimOptions {
            run_as: args.run_as.clone(),
            secrets_dir: args.secrets_dir.clone(),
        };
        return match crate::agent::jobs::shim::run(
            &args.dir,
            args.attempt,
            &args.heartbeat,
            &options,
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rift shim: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if matches!(cli.command, Command::Agent(_) | Command::Up(_)) {
        // The state directory holds job env, logs, etcd's data and keys: everything the agent
        // (and the etcd member it starts) creates is private to its user.
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    } else if !matches!(cli.command, Command::Bench(_) | Command::Sim(_)) {
        // Not for long-running processes that hold connections to etcd members they may see
        // die (a benchmark kills the etcd it started): writing to such a socket must be an
        // error, not a silent death by SIGPIPE.
        restore_default_sigpipe();
    }
    match &cli.command {
        // `rift up` keeps the terminal for its own progress; the agent logs to a file.
        Command::Up(args) => {
            if let Err(e) = init_file_tracing(&args.state_dir.join("agent.log")) {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
        // An agent says what it does (stderr, the journal under systemd); a command only
        // warns. RIFT_LOG overrides either (README, "Logs").
        Command::Agent(_) => init_tracing("info"),
        _ => init_tracing("warn"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `rift get ... | head` should end quietly when `head` exits, as other Unix tools do, instead
/// of panicking on a broken pipe (Rust ignores SIGPIPE by default).
fn restore_default_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: called at start-up before any thread is spawned; SIG_DFL runs no handler code.
    unsafe {
        let _ = signal(Signal::SIGPIPE, SigHandler::SigDfl);
    }
}

/// Logs to stderr at `RIFT_LOG` (tracing's filter syntax, e.g. `debug` or
/// `info,rift::controllers=debug`), else at `default`.
fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RIFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal: `rift agent 2> agent.log` gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

fn init_file_tracing(path: &std::path::Path) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RIFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    Ok(())
}

async fn execute(cli: Cli) -> Result<(), CliError> {
    let given = (!cli.endpoints.is_empty()).then(|| cli.endpoints.clone());
    // Credentials are read only by commands that talk to etcd.
    let access = || config::access(&cli.endpoints, cli.insecure);
    let store = || connect(&cli.endpoints, cli.insecure);
    match cli.command {
        Command::Apply(args) => apply::run(args, store).await,
        Command::Get(args) => get::run(args, &store().await?).await,
        Command::Describe(args) => describe::run(args, &store().await?).await,
        Command::Delete(args) => delete::run(args, store).await,
        Command::Edit(args) => edit::run(args, &store().await?).await,
        Command::Label(args) => modify::meta(args, modify::Map::Labels, &store().await?).await,
        Command::Annotate(args) => {
            modify::meta(args, modify::Map::Annotations, &store().await?).await
        }
        Command::Scale(args) => modify::scale(args, &store().await?).await,
        Command::Explain(args) => explain::run(args),
        Command::Top(args) => top::run(args, &store().await?).await,
        Command::Version(args) => version::run(args, store).await,
        Command::Crds(args) => crds::run(args),
        Command::Status(args) => status::run(args, &store().await?).await,
        Command::Dashboard(args) => dashboard::run(args, &access()?).await,
        Command::Logs(args) => logs::run(args, &store().await?).await,
        Command::Agent(args) => agent::run(*args, given, cli.insecure).await,
        Command::Up(args) => up::run(args).await,
        Command::Cordon(args) => cordon::cordon(args, &store().await?).await,
        Command::Uncordon(args) => cordon::uncordon(args, &store().await?).await,
        Command::Drain(args) => cordon::drain(args, &store().await?).await,
        Command::Import(args) => import::run(args),
        Command::Completion(args) => completion::run(args),
        Command::Token(args) => token::run(args, &store().await?).await,
        Command::Certs(args) => certs::run(args, access).await,
        Command::Artifact(args) => artifact::run(args, &store().await?).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Sim(args) => sim::run(args, &access()?).await,
        Command::Shim(_) => unreachable!("handled before the runtime starts"),
    }
}

/// The one way an operator command obtains its store: the credentials of `RIFT_CONFIG`
/// (`--endpoints` overrides its endpoints; `--insecure` for plaintext). Commands that check their
/// input first take it as a closure. (`rift up` talks to the etcd member it starts itself;
/// agents, `sim` and `bench` have their own configuration.)
async fn connect(endpoints: &[String], insecure: bool) -> Result<Store, CliError> {
    let access = config::access(endpoints, insecure)?;
    Ok(Store::connect(&access).await?)
}

/// `-f` arguments: files, directories, or `-` for stdin.
#[derive(Debug, Clone, clap::Args)]
pub struct FileArgs {
    /// Manifest file, directory (recursive), or `-` for stdin. Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command, flag and argument a person can type says what it is in `--help`.
    #[test]
    fn every_command_flag_and_argument_has_help() {
        let mut missing = Vec::new();
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && !arg.is_hide_set() && arg.get_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.is_hide_set() || sub.get_name() == "help" {
                    continue;
                }
                let here = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(here.clone());
                }
                walk(sub, &here, missing);
            }
        }
        walk(&super::Cli::command(), "rift", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }
}

//! `rift completion bash|zsh|fish`: a shell completion script on stdout (clap_complete).

use std::io::Write;

use clap::CommandFactory;
use clap_complete::Shell;

use super::{Cli, CliError};

#[derive(Debug, clap::Args)]
#[command(after_help = "Install, e.g.:\n  \
    rift completion bash > /etc/bash_completion.d/rift\n  \
    rift completion zsh > \"${fpath[1]}/_rift\"\n  \
    rift completion fish > ~/.config/fish/completions/rift.fish")]
pub struct CompletionArgs {
    /// The shell to complete for.
    pub shell: Shell,
}

pub fn run(args: CompletionArgs) -> Result<(), CliError> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "rift", &mut script);
    std::io::stdout()
        .write_all(&script)
        .map_err(|source| CliError::Io {
            path: "<stdout>".into(),
            source,
        })
}

//! `rift completion SHELL` prints a completion script that knows rift's subcommands.

mod support;

use support::cli::rift;

#[test]
fn bash_zsh_and_fish_scripts_name_the_subcommands() {
    for (shell, marker) in [
        ("bash", "complete -F _rift"),
        ("zsh", "#compdef rift"),
        ("fish", "complete -c rift"),
    ] {
        let out = rift("http://127.0.0.1:1", &["completion", shell]);
        assert!(out.ok, "{shell}: {}", out.stderr);
        assert!(out.stdout.contains(marker), "{shell}: no `{marker}`");
        for sub in ["apply", "get", "drain", "import", "hosts", "completion"] {
            assert!(out.stdout.contains(sub), "{shell}: `{sub}` missing");
        }
    }
}

#[test]
fn an_unknown_shell_is_refused_with_the_choices() {
    let out = rift("http://127.0.0.1:1", &["completion", "tcsh"]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("bash") && out.stderr.contains("zsh"),
        "{}",
        out.stderr
    );
}

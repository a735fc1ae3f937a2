//! `pangaea-ctl completion bash|zsh|fish|elvish|powershell`: the shell's completion script,
//! generated from the command-line definition itself (clap_complete), so it never lags
//! behind a new command or flag.

/// Prints the completion script for `shell`.
pub fn run(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let mut cmd = crate::cli::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "pangaea-ctl", &mut script);
    let mut script = String::from_utf8_lossy(&script).into_owned();
    if shell == clap_complete::Shell::Bash {
        script = mend_bash(&script);
    }
    super::print_out(&script)
}

/// clap_complete's bash script spells the state of a subcommand of a hyphenated program two
/// ways: the loop that walks the words arrives at `pangaea__ctl__subcmd__node`, the arms that
/// answer are labelled `pangaea__subcmd__ctl__subcmd__node`, so nothing after the first word
/// completed (clap-rs/clap#6421, open). One spelling for both.
fn mend_bash(script: &str) -> String {
    script.replace("pangaea__subcmd__ctl", "pangaea__ctl")
}

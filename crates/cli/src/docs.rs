//! Man pages and shell completions generated from a binary's clap
//! definitions, so that what `man fjord-send-push` and a TAB show is what
//! the parser accepts. Each binary exposes this as a hidden
//! `generate-docs --out DIR` subcommand; `scripts/deb` calls it on the
//! binaries it packages.
//!
//! Layout written under `DIR` (the Debian names, so a packager copies
//! directories as they are):
//!
//! ```text
//! man/BIN.1  man/BIN-SUBCOMMAND.1 ...        one page per visible command
//! completions/bash/BIN                       /usr/share/bash-completion/completions
//! completions/zsh/_BIN                       /usr/share/zsh/vendor-completions
//! completions/fish/BIN.fish                  /usr/share/fish/vendor_completions.d
//! ```

use clap_complete::Shell;
use std::path::{Path, PathBuf};

/// Why the documentation could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DocsError {
    /// A directory or file could not be created or written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The directory or file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The arguments of the hidden `generate-docs` subcommand.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory to write man/ and completions/ into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Writes the man pages and completions of `cmd` (the binary's whole
/// command, `Cli::command()`) under `out`; returns the files written.
/// Hidden subcommands (this one) get no page and are not completed.
pub fn generate(cmd: clap::Command, out: &Path) -> Result<Vec<PathBuf>, DocsError> {
    let cmd = cmd.disable_help_subcommand(true);
    let mut built = cmd.clone();
    built.build();
    let name = cmd.get_name().to_string();
    let mut written = Vec::new();

    let man_dir = out.join("man");
    create_dir(&man_dir)?;
    write_pages(&built, &man_dir, &mut written)?;

    for (shell, dir, file) in [
        (Shell::Bash, "bash", name.clone()),
        (Shell::Zsh, "zsh", format!("_{name}")),
        (Shell::Fish, "fish", format!("{name}.fish")),
    ] {
        let dir = out.join("completions").join(dir);
        create_dir(&dir)?;
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut without_hidden(cmd.clone()), &name, &mut script);
        if shell == Shell::Bash {
            script = fix_bash_hyphen(&script, &name);
        }
        let path = dir.join(file);
        write_file(&path, &script)?;
        written.push(path);
    }
    Ok(written)
}

/// clap_complete's bash script for a binary named with a hyphen never
/// completes a subcommand's options (clap-rs/clap#6421, open for
/// clap_complete 4.6): its dispatch loop names the state of
/// `fjord-send push` `fjord__send__subcmd__push`, but the case arms spell
/// it `fjord__subcmd__send__subcmd__push`. This renames the arms the way
/// the loop does (the installed-package test completes `fjord-recv serve
/// --con` through bash to prove it).
fn fix_bash_hyphen(script: &[u8], name: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(script);
    let wrong = format!("{}__subcmd__", name.replace('-', "__subcmd__"));
    let right = format!("{}__subcmd__", name.replace('-', "__"));
    text.replace(&wrong, &right).into_bytes()
}

/// The page of `cmd`, then one per visible subcommand, recursively
/// (`fjord-send-push.1`: clap names a built subcommand `fjord-send-push`).
fn write_pages(
    cmd: &clap::Command,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), DocsError> {
    let man = clap_mangen::Man::new(cmd.clone())
        .section("1")
        .manual("fjord manual")
        .source(format!("fjord {}", env!("CARGO_PKG_VERSION")));
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page).map_err(|source| DocsError::Write {
        path: path.clone(),
        source,
    })?;
    write_file(&path, &page)?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}

/// `cmd` without its hidden subcommands, for the completion scripts
/// (clap_complete would otherwise offer `generate-docs`). clap cannot
/// remove a subcommand, so this is a new command with `cmd`'s name,
/// version, about, top-level arguments and visible subcommands: all that
/// the completion scripts read.
fn without_hidden(cmd: clap::Command) -> clap::Command {
    let mut visible = clap::Command::new(cmd.get_name().to_string());
    if let Some(v) = cmd.get_version() {
        visible = visible.version(v.to_string());
    }
    if let Some(a) = cmd.get_about() {
        visible = visible.about(a.clone());
    }
    for arg in cmd.get_arguments() {
        if !matches!(arg.get_id().as_str(), "help" | "version") {
            visible = visible.arg(arg.clone());
        }
    }
    visible.subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

fn create_dir(dir: &Path) -> Result<(), DocsError> {
    std::fs::create_dir_all(dir).map_err(|source| DocsError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), DocsError> {
    std::fs::write(path, data).map_err(|source| DocsError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> clap::Command {
        clap::Command::new("my-tool")
            .version("1.0")
            .about("A tool")
            .subcommand(
                clap::Command::new("push")
                    .about("Push things")
                    .arg(clap::Arg::new("config").long("config")),
            )
            .subcommand(clap::Command::new("status").about("Show status"))
            .subcommand(clap::Command::new("generate-docs").hide(true))
    }

    #[test]
    fn pages_for_every_visible_command_and_three_completions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = generate(cli(), dir.path()).expect("generate");
        let mut names: Vec<String> = written
            .iter()
            .map(|p| {
                p.strip_prefix(dir.path())
                    .expect("under out")
                    .display()
                    .to_string()
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "completions/bash/my-tool",
                "completions/fish/my-tool.fish",
                "completions/zsh/_my-tool",
                "man/my-tool-push.1",
                "man/my-tool-status.1",
                "man/my-tool.1",
            ]
        );
        let page = std::fs::read_to_string(dir.path().join("man/my-tool-push.1")).expect("page");
        assert!(page.contains("Push things"), "{page}");
        assert!(page.contains("config"), "{page}");
        let top = std::fs::read_to_string(dir.path().join("man/my-tool.1")).expect("page");
        assert!(top.contains("my\\-tool\\-push(1)"), "{top}");
        assert!(
            !top.contains("generate"),
            "a hidden command is listed: {top}"
        );
        let bash =
            std::fs::read_to_string(dir.path().join("completions/bash/my-tool")).expect("bash");
        assert!(bash.contains("push") && bash.contains("status"), "{bash}");
        assert!(!bash.contains("generate-docs"), "{bash}");
        // the subcommand's arm is spelled as the dispatch loop spells it
        assert!(bash.contains("my__tool__subcmd__push)"), "{bash}");
        assert!(!bash.contains("my__subcmd__tool"), "{bash}");
    }
}

//! `drl gen`: man pages and shell completions, generated from the command line definition
//! itself (clap_mangen, clap_complete), so they can never disagree with `--help`.
//!
//! `drl gen man DIR` writes `drl.1` and one page per command (`drl-status.1`,
//! `drl-snapshot-create.1`, ...), the way git and cargo name theirs; `drl completions
//! SHELL` (also `drl gen completions SHELL`) prints the script for bash, zsh, fish, elvish or powershell. The Debian package runs
//! both at build time (scripts/build-deb.sh).

use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, Subcommand};
use clap_complete::Shell;

use super::{exit, Cli};

#[derive(Subcommand, Debug)]
pub enum GenCmd {
    /// Write the man pages (section 1) into DIR: drl.1 and drl-COMMAND.1 for every command.
    Man(ManArgs),
    /// Print the completion script of SHELL on standard output.
    ///
    /// bash: save as /usr/share/bash-completion/completions/drl; zsh: as _drl in a directory
    /// of $fpath; fish: as ~/.config/fish/completions/drl.fish.
    Completions(CompletionArgs),
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
}

pub fn run(c: &GenCmd) -> i32 {
    match c {
        GenCmd::Man(a) => match write_man_pages(&a.dir) {
            Ok(pages) => {
                for p in pages {
                    println!("{}", p.display());
                }
                exit::OK
            }
            Err(e) => {
                eprintln!("drl gen man: {e}");
                exit::FAILED
            }
        },
        GenCmd::Completions(a) => completions(a),
    }
}

/// `drl completions SHELL` and `drl gen completions SHELL`: print the script.
pub fn completions(a: &CompletionArgs) -> i32 {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "drl", &mut buf);
    use std::io::Write;
    match std::io::stdout().write_all(&buf) {
        // A closed pipe (`| head`) is the reader's choice, not an error.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("drl completions: {e}");
            exit::FAILED
        }
        _ => exit::OK,
    }
}

/// Write `drl.1` and a page for every command and subcommand below it; returns the paths.
pub fn write_man_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| std::io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut out = Vec::new();
    page(&cmd, "drl", dir, &mut out)?;
    Ok(out)
}

fn page(
    cmd: &clap::Command,
    name: &str,
    dir: &Path,
    out: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    // The page's own name (drl-snapshot-create) in its NAME section and title.
    // clap names are 'static (without its "string" feature); this runs once per page in a
    // short-lived command, so leaking the few names is harmless.
    let title: &'static str = Box::leak(name.to_owned().into_boxed_str());
    let named = cmd.clone().name(title).bin_name(title.replace('-', " "));
    let path = dir.join(format!("{name}.1"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(named).render(&mut buf)?;
    std::fs::write(&path, buf)
        .map_err(|e| std::io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))?;
    out.push(path);
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        page(sub, &format!("{name}-{}", sub.get_name()), dir, out)?;
    }
    Ok(())
}

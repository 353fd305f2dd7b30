//! The `drl` binary: the daemon and the admin commands (see `drl --help`).

fn main() {
    std::process::exit(drl::cli::main());
}

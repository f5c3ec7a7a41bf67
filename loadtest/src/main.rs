//! `loadtest`: see `loadtest --help`, and the crate docs for how it works.

use std::process::ExitCode;

use clap::Parser;
use loadtest::args::Args;
use loadtest::worker::{worker_main, WORKER_ARG};

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == WORKER_ARG) {
        return worker_main();
    }
    loadtest::run::run(Args::parse())
}

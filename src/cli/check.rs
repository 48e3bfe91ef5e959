//! `portcullis check`: validate the config, print every error and warning with its
//! position; `--strict` refuses warnings too.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{load_config, print_diagnostics};

pub(super) fn run(path: PathBuf, strict: bool) -> ExitCode {
    match load_config(&path) {
        Ok(loaded) => {
            print_diagnostics(&path, &loaded.warnings);
            if strict && !loaded.warnings.is_empty() {
                eprintln!(
                    "{}: {} warning(s), refused by --strict",
                    path.display(),
                    loaded.warnings.len()
                );
                return ExitCode::FAILURE;
            }
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

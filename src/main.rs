//! The `fhirhose` command. Exit codes: 0 ok; 2 usage or configuration; 3 authorization;
//! 4 server or fatal error (including files that failed); 5 dead letters with `--strict`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = fhirhose::cli::Cli::parse();
    fhirhose::logging::init(cli.log_format, &cli.log_level);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(4);
        }
    };
    match rt.block_on(fhirhose::cli::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One line: the error and its causes, outermost first.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("error: {msg}");
            ExitCode::from(fhirhose::cli::exit_code_for(&e))
        }
    }
}

//! `runscale-fake-runner`: the emulators' fake runner agent as its own executable (for tests
//! that need no runscale binary). Everything it does is in
//! [`runscale_emulator::fake_runner`], which `runscale fake-runner` runs too.

use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("runscale-fake-runner: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(runscale_emulator::fake_runner::main(
        std::env::args_os().collect(),
    ))
}

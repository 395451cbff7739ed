//! The `runscale` executable; everything is in the library (`runscale::cli`).

fn main() -> std::process::ExitCode {
    runscale::cli::main()
}

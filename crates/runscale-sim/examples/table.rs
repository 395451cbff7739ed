//! Prints the comparison table for a generated workload: `cargo run --release --example table -- workday 1`.
fn main() {
    let mut a = std::env::args().skip(1);
    let kind = a.next().unwrap_or_else(|| "workday".into());
    let seed: u64 = a.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let args = runscale_sim::SimulateArgs {
        trace: runscale_sim::TraceSource::Generate {
            kind: kind.parse().expect("generator"),
            seed,
        },
        ..Default::default()
    };
    match runscale_sim::run(&args) {
        Ok(r) => {
            print!("{}", r.to_table());
            if let Some(dir) = a.next() {
                runscale_sim::charts::write(&r, std::path::Path::new(&dir)).expect("charts");
            }
        }
        Err(e) => eprintln!("error: {e}"),
    }
}
